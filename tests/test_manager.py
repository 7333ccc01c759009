"""The manager as a service: ports survive restarts and crashes through the
config file, the connect policies, a server without RFC 2217, and who may use
the control socket.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from peers import PtyDevice, Ser2net, Vcom, handshake, run_as, wait_until


class PlainTelnetSer2net(Ser2net):
    """ser2net with a telnet accepter that does not offer RFC 2217: it refuses COM-PORT-OPTION."""

    name = "ser2net-telnet"
    listeners = 1

    def _config(self) -> str:
        return "\n".join([
            "%YAML 1.1", "---", "connection: &plain",
            f"    accepter: telnet,tcp,{self.host},{self.port}",
            "    options:", "      kickolduser: true",
            f"    connector: serialdev,{self.device},115200n81,local", "",
        ])


def start_manager(vcom: Vcom) -> subprocess.Popen[bytes]:
    log = open(vcom.home / "foreground.log", "ab")  # noqa: SIM115 - closed with the process below
    proc = subprocess.Popen([sys.executable, "-m", "vcom", "run"], env=vcom.env, stdin=subprocess.DEVNULL,
                            stdout=log, stderr=log)
    log.close()
    wait_until(lambda: vcom.cli("list").returncode == 0, 15, "manager answering")
    return proc


def test_ports_come_back_after_a_restart_and_after_a_crash(vcom: Vcom, ser2net: Ser2net, device: PtyDevice,
                                                          open_port, refused_port, tmp_path):
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    vcom.add(a, f"127.0.0.1:{ser2net.port}", "--baud", "19200", "--linger", "0.5")
    unreachable = refused_port  # b must not compete with a for ser2net's one device
    vcom.add(b, f"tcp://127.0.0.1:{unreachable}", "--connect", "always", "--mode", "0600")
    config = tomllib.loads((vcom.home / "vcom.toml").read_text())
    assert [p["device"] for p in config["port"]] == [str(a), str(b)]
    assert config["port"][0]["baud"] == 19200 and config["port"][1]["mode"] == "0600"
    listing = json.loads(vcom.ok("list", "--json").stdout)
    assert [p["target"] for p in listing["ports"]] == [f"rfc2217://127.0.0.1:{ser2net.port}",
                                                       f"tcp://127.0.0.1:{unreachable}"]

    vcom.ok("shutdown")
    assert not a.exists() and not os.path.lexists(a) and not os.path.lexists(b)

    manager = start_manager(vcom)
    try:
        assert os.path.islink(a) and os.path.islink(b)
        manager.send_signal(signal.SIGKILL)  # a crash: no clean-up, the symlinks now point at dead ptys
        manager.wait(timeout=10)
        assert os.path.lexists(a)
    finally:
        if manager.poll() is None:
            manager.kill()
            manager.wait(timeout=10)
    manager = start_manager(vcom)
    try:
        assert os.path.islink(a)
        # Repaired: the link leads to the new pty, and the port works.
        assert os.path.exists(os.readlink(a))
        fd = open_port(a)
        handshake(fd, device)
        status = vcom.status(a)
        assert status["settings"]["baud"] == 19200  # the fresh port starts at --baud
    finally:
        vcom.ok("shutdown")
        manager.wait(timeout=15)


def test_on_open_connects_only_while_a_program_has_the_port(vcom: Vcom, ser2net: Ser2net, device, open_port,
                                                            tmp_path):
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{ser2net.port}", "--linger", "0.3")
    assert vcom.status(port)["state"] == "idle"
    fd = open_port(port)
    handshake(fd, device)
    assert vcom.status(port)["state"] == "connected"
    os.close(fd)
    status = vcom.wait_status(port, lambda s: s["state"] == "idle", what="disconnected after the linger")
    assert status["connects"] == 1 and status["open"] is False

    always = tmp_path / "ttyV1"
    vcom.add(always, f"127.0.0.1:{ser2net.port}", "--connect", "always")
    vcom.wait_status(always, lambda s: s["state"] == "connected", what="connected without any program")


def test_a_server_refusing_rfc2217_gets_one_warning_and_plain_data(vcom: Vcom, device: PtyDevice, start_peer,
                                                                  open_port, tmp_path):
    server = start_peer(PlainTelnetSer2net(tmp_path / "plain", device.path))
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{server.port}")
    fd = open_port(port)
    handshake(fd, device)
    os.write(fd, b"again")
    assert device.read_exact(5) == b"again"
    status = vcom.status(port)
    assert status["com_port"] is False
    assert status["remote_settings"]["baud"] is None
    log = (vcom.home / "vcom.log").read_text()
    assert log.count("refused COM-PORT-OPTION") == 1, log


def test_control_socket_refuses_users_outside_root_and_group_vcom(refused_port):
    # A home every user can reach (pytest's own tmp dirs are private), so that the manager's
    # credential check, not the file system, is what turns the other user away.
    home = Path(tempfile.mkdtemp(prefix="vcom-perm-", dir="/tmp"))
    os.chmod(home, 0o755)
    vcom = Vcom(home / "h")
    try:
        vcom.ok("add", str(home / "ttyV0"), f"127.0.0.1:{refused_port}")
        os.chmod(vcom.home, 0o755)
        os.chmod(vcom.home / "vcom.sock", 0o666)
        reply = json.loads(_ask_as_nobody(vcom.home / "vcom.sock", b'{"cmd": "list"}\n'))
        assert reply["ok"] is False
        assert "permission denied" in reply["error"] and "vcom" in reply["error"]
        assert "ports" not in reply
        assert vcom.cli("list").returncode == 0  # root still gets in
    finally:
        vcom.close()
        shutil.rmtree(home, ignore_errors=True)


def _ask_as_nobody(sock_path: Path, request: bytes) -> str:
    nobody = pwd.getpwnam("nobody")

    def ask() -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(sock_path))
            s.sendall(request)
            return s.recv(4096).decode()

    return run_as(nobody.pw_uid, nobody.pw_gid, [], ask)
