"""The manager as a service: ports survive restarts and crashes through the
config file, the connect policies and a server without RFC 2217.  Who may use
the control socket is in test_control_access.py.
"""

from __future__ import annotations

import json
import os
import signal
import tomllib

from peers import PtyDevice, Ser2net, Vcom, handshake, wait_until


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

    manager = vcom.start_manager()
    try:
        assert os.path.islink(a) and os.path.islink(b)
        inner = int((vcom.home / "vcom.pid").read_text())
        # The whole service is killed (the keeper, and with it the manager): no clean-up, the symlinks
        # now point at dead ptys.
        manager.send_signal(signal.SIGKILL)
        manager.wait(timeout=10)
        wait_until(lambda: not os.path.exists(f"/proc/{inner}"), 10, "the manager to die with its keeper")
        assert os.path.lexists(a)
    finally:
        if manager.poll() is None:
            manager.kill()
            manager.wait(timeout=10)
    manager = vcom.start_manager()
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
