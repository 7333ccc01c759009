"""vcom confined as systemd/vcom.service and vcom-share@.service confine it, without systemd (never
booted here).

* Capabilities: root, but only those of the unit's CapabilityBoundingSet= (setpriv).  An interposed
  call is answered only for a process that holds the port open, which the manager reads in
  /proc/PID/fd; that, taking a `vcom wrap` listener (pidfd_getfd) and reading and writing the program's
  termios (process_vm_readv/writev) are ptrace access checks.  Without CAP_SYS_PTRACE, root may not make
  them on another user's process, nor on one with capabilities it lacks, and every wrapped program
  would get what a bare pty gives (parity refused).  Real programs (stty) set 7E1 through both
  interposers, one of them as user nobody.
  A share under its own unit's smaller set still serves its device.
* Mount namespace: PrivateTmp= and ProtectHome= show the manager another /tmp and /home than its
  clients see (unshare and a tmpfs stand in for them): a port's directory, TLS files and a shared
  device that only the client sees are refused with the reason.

Users who reach the system manager's sockets in /run/vcom: tests/test_system_manager.py.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import serial
from peers import PYTHON, PtyDevice, Vcom, has_7e1, notify_socket, wait_until
from tls_peers import Certs

REPO = Path(__file__).resolve().parent.parent


def unit_capabilities(unit: str = "vcom.service") -> list[str]:
    text = (REPO / "systemd" / unit).read_text()
    found = re.search(r"^CapabilityBoundingSet=(.+)$", text, re.MULTILINE)
    assert found is not None, f"{unit} sets no CapabilityBoundingSet="
    return [name.lower() for name in found.group(1).split()]


def confined_to(unit: str) -> tuple[str, ...]:
    """setpriv's arguments that leave what follows the capabilities of ``unit``, and no others."""
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is not installed")
    if os.geteuid() != 0:
        pytest.skip("needs root, as the unit runs vcom")
    keep = ",".join(f"+{name.removeprefix('cap_')}" for name in unit_capabilities(unit))
    return ("setpriv", f"--bounding-set=-all,{keep}", f"--inh-caps=-all,{keep}", "--")


@pytest.fixture
def confined(vcom: Vcom) -> Vcom:
    vcom.start_manager("--log-level", "debug", prefix=confined_to("vcom.service"))
    status = Path(f"/proc/{vcom.manager_pid()}/status").read_text()
    bounding = int(re.search(r"^CapBnd:\s*([0-9a-f]+)$", status, re.MULTILINE).group(1), 16)
    assert bounding != (1 << (bounding.bit_length())) - 1, "the manager kept every capability"
    return vcom


def _stty_7e1(vcom: Vcom, port: Path, *, preload: bool = False, user: str | None = None) -> str:
    """`stty cs7 parenb` on the port through the interposer, then `stty -a`: what the second printed."""
    device = os.path.realpath(port)  # the program as nobody may not look inside the test's directory
    script = f"stty -F {device} cs7 parenb && stty -F {device} -a"
    command = ["sh", "-c", script]
    if user is not None:
        account = pwd.getpwnam(user)
        command = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups", *command]
    result = subprocess.run([PYTHON, "-m", "vcom", "wrap", *(["--preload"] if preload else []), *command],
                            env=vcom.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{result.stderr}\n{vcom.log_tail()}"
    return result.stdout


@pytest.mark.parametrize("preload", [False, True], ids=["seccomp", "preload"])
def test_a_wrapped_program_gets_parity_from_a_manager_confined_as_the_unit_says(confined: Vcom, refused_port,
                                                                               tmp_path, preload):
    port = tmp_path / "ttyV0"
    confined.add(port, f"127.0.0.1:{refused_port}")
    assert has_7e1(_stty_7e1(confined, port, preload=preload))
    log = confined.log_tail(400)
    assert "interposer request from pid" not in log, log  # none refused
    if not preload:
        # The listener was handed over: the manager may reach into the supervisor and the program.
        assert "the manager answers its calls" in log and "cannot take its seccomp listener" not in log, log


def test_another_users_wrapped_program_gets_parity_too(confined: Vcom, refused_port, tmp_path):
    port = tmp_path / "ttyV0"
    confined.add(port, f"127.0.0.1:{refused_port}", "--mode", "0666")
    assert has_7e1(_stty_7e1(confined, port, user="nobody"))
    log = confined.log_tail(400)
    assert "the manager answers its calls" in log and "cannot take its seccomp listener" not in log, log


@pytest.fixture
def hidden_from_manager(vcom: Vcom, tmp_path) -> tuple[Path, Path]:
    """Two directories, (hidden, shared): the manager runs in a mount namespace where ``hidden`` is a fresh
    tmpfs, as /tmp is under the unit's PrivateTmp= and /home under ProtectHome=; both see ``shared``."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is not installed")
    hidden, shared = tmp_path / "hidden", tmp_path / "shared"
    hidden.mkdir()
    shared.mkdir()
    vcom.start_manager(prefix=("unshare", "--mount", "--propagation", "private", "sh", "-c",
                               'mount -t tmpfs tmpfs "$0" && exec "$@"', str(hidden)))
    return hidden, shared


def test_a_port_where_only_the_manager_would_see_it_is_refused(vcom: Vcom, hidden_from_manager, refused_port,
                                                               tmp_path):
    # A port made where only the manager sees it would exist for the manager alone while `vcom add`
    # reported success.
    hidden, shared = hidden_from_manager
    refused = vcom.cli("add", str(hidden / "ttyV0"), f"127.0.0.1:{refused_port}")
    assert refused.returncode == 1, refused.stdout
    assert refused.stderr.strip() == (
        f"vcom: cannot create {hidden / 'ttyV0'}: the manager does not see the {hidden} you see (it runs in a "
        "mount namespace of its own, e.g. systemd's PrivateTmp= or ProtectHome=); choose a path under /dev, "
        "such as /dev/ttyV0")
    # All or none: a file naming a good port and a hidden one adds neither.
    ports = tmp_path / "ports.toml"
    ports.write_text(f'[[port]]\ndevice = "{shared / "ttyV1"}"\ntarget = "127.0.0.1:{refused_port}"\n'
                     f'[[port]]\ndevice = "{hidden / "ttyV2"}"\ntarget = "127.0.0.1:{refused_port}"\n')
    assert vcom.cli("add", "--from", str(ports)).returncode == 1
    assert vcom.status()["ports"] == []
    vcom.add(shared / "ttyV1", f"127.0.0.1:{refused_port}")  # a directory both see
    assert [p["device"] for p in vcom.status()["ports"]] == [str(shared / "ttyV1")]


def test_files_only_the_client_sees_are_refused_with_the_reason(vcom: Vcom, hidden_from_manager, refused_port):
    # TLS files and a shared device under ProtectHome= or PrivateTmp=: the manager found no such file and
    # said "does not exist" of a file the user could see.
    hidden, shared = hidden_from_manager
    mounted = "(it runs in a mount namespace of its own, e.g. systemd's PrivateTmp= or ProtectHome=)"
    tls = "keep TLS files where the manager sees them, such as /etc/vcom, or hand them to the unit with LoadCredential="
    unseen, seen = Certs(hidden / "pki"), Certs(shared / "pki")
    pair = unseen.client()
    target = f"tcp+tls://127.0.0.1:{refused_port}"
    cases = [
        (["add", str(shared / "ttyV0"), target, "--tls-ca", str(unseen.ca_file)], f"--tls-ca {unseen.ca_file}", tls),
        (["add", str(shared / "ttyV0"), target, "--tls-cert", str(pair.cert), "--tls-key", str(pair.key)],
         f"--tls-cert {pair.cert}", tls),
        (["share", "sim:echo", "--listen", "127.0.0.1:0", "--tls-cert", str(pair.cert), "--tls-key", str(pair.key)],
         f"--tls-cert {pair.cert}", tls),
    ]
    device = PtyDevice()
    try:
        (hidden / "ttyS0").symlink_to(device.path)
        cases.append((["share", str(hidden / "ttyS0"), "--listen", "127.0.0.1:0"], f"device {hidden / 'ttyS0'}",
                      "name the device by its path under /dev"))
        for args, what, advice in cases:
            refused = vcom.cli(*args)
            assert (refused.returncode, refused.stderr.strip()) == (
                1, f"vcom: {what}: the manager does not see the file you see {mounted}; {advice}"), args
        status = vcom.status()
        assert (status["ports"], status["shares"]) == ([], [])  # nothing made, nothing saved
        # The same where both see them.
        vcom.add(shared / "ttyV0", target, "--tls-ca", str(seen.ca_file))
        (shared / "ttyS0").symlink_to(device.path)
        assert vcom.cli("share", str(shared / "ttyS0"), "--listen", "127.0.0.1:0").returncode == 0
        status = vcom.status()
        assert ([p["device"] for p in status["ports"]], [s["device"] for s in status["shares"]]) == (
            [str(shared / "ttyV0")], [str(shared / "ttyS0")])
    finally:
        device.close()


def test_a_share_confined_as_its_unit_serves_its_device(tmp_path):
    # vcom-share@.service keeps even fewer capabilities: the device's settings, lines and data must all
    # still pass (here a pty stands in for /dev/ttyUSB0; RFC 2217 from pyserial, as a remote program).
    device = PtyDevice()
    notify = notify_socket(tmp_path)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"), "VCOM_HOME": str(tmp_path / "h")}
    share = subprocess.Popen([*confined_to("vcom-share@.service"), PYTHON, "-m", "vcom", "share", device.path,
                              "--listen", "127.0.0.1:0", "--protocol", "rfc2217", "--foreground"], env=env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    client = None
    try:
        ready = notify.recv(4096).decode()
        assert "READY=1" in ready, ready
        port = int(ready.rsplit(":", 1)[1])
        client = serial.serial_for_url(f"rfc2217://127.0.0.1:{port}", baudrate=19200, stopbits=2, timeout=10)
        client.write(b"to the device")
        assert device.read_exact(13) == b"to the device"
        device.write(b"from the device")
        assert client.read(15) == b"from the device"
        wait_until(lambda: (device.settings().baud, device.settings().cstopb) == (19200, True), 10,
                   "19200 baud and two stop bits on the device")
    finally:
        if client is not None:
            client.close()
        share.send_signal(signal.SIGTERM)
        try:
            assert share.wait(timeout=15) == 0, share.stderr.read().decode() if share.stderr else ""
        finally:
            if share.poll() is None:
                share.kill()
                share.wait(timeout=10)
            if share.stderr is not None:
                share.stderr.close()
            notify.close()
            device.close()
