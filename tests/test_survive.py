"""Ports outlive the manager: kill -9, a stalled loop, a restart under systemd.

A program holds a vcom port and keeps using it while the manager is killed,
frozen or restarted; its descriptor must never fail, what it writes meanwhile
must arrive, and the port's symlink must keep leading to its pty.  systemd
itself is not run here (see /work/shared/docs/service-testing.md): the test
is the service manager, with a NOTIFY_SOCKET it reads (READY, WATCHDOG,
FDSTORE with the descriptors attached) and a restart done the way systemd
does it (the stored descriptors at 3.., LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID).
"""

from __future__ import annotations

import array
import json
import os
import select
import signal
import socket
import subprocess
import textwrap
import time
import tty
from pathlib import Path

import pytest
from peers import PYTHON, Vcom, refusing_port, wait_until


def share_echo(vcom: Vcom) -> int:
    return vcom.share("sim:echo")


def manager_pid(vcom: Vcom) -> int:
    return int((vcom.home / "vcom.pid").read_text().split()[0])


def roundtrip(fd: int, message: bytes, timeout: float = 15) -> bytes:
    """Write ``message`` to the port (a loop-back plug at the far end) and read it back."""
    os.write(fd, message)
    return read_exact(fd, len(message), timeout)


def read_exact(fd: int, size: int, timeout: float = 15) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while len(got) < size and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            got += os.read(fd, size - len(got))
    return got


@pytest.fixture
def program(tmp_path):
    fds: list[int] = []

    def open_(path: Path) -> int:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(fd)
        fds.append(fd)
        return fd

    yield open_
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def test_a_killed_manager_is_replaced_and_the_program_never_notices(vcom: Vcom, program, tmp_path):
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{share_echo(vcom)}")
    fd = program(port)
    pty = os.ttyname(fd)
    assert roundtrip(fd, b"before") == b"before"
    for round_ in range(3):
        old = manager_pid(vcom)
        os.kill(old, signal.SIGKILL)
        os.write(fd, f"while down {round_}".encode())  # no EIO: the keeper holds the master
        assert read_exact(fd, len(f"while down {round_}")) == f"while down {round_}".encode()
        wait_until(lambda old=old: manager_pid(vcom) != old, 15, "a new manager")
        assert os.readlink(port) == pty  # the symlink never left the program's pty
        assert roundtrip(fd, b"after") == b"after"
    status = vcom.status(port)
    assert status["open"] and status["pty"] == pty
    assert "was killed by signal 9" in vcom.log_tail(200)


def test_a_stalled_manager_is_replaced(vcom: Vcom, program, tmp_path):
    vcom.env["VCOM_WATCHDOG_SEC"] = "1"
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{share_echo(vcom)}")
    fd = program(port)
    assert roundtrip(fd, b"before") == b"before"
    old = manager_pid(vcom)
    os.kill(old, signal.SIGSTOP)  # the loop stops: no more watchdog pings
    try:
        wait_until(lambda: manager_pid(vcom) != old, 20, "the stalled manager replaced")
    finally:
        if os.path.exists(f"/proc/{old}"):
            os.kill(old, signal.SIGCONT)
    assert roundtrip(fd, b"after the stall") == b"after the stall"
    assert "no watchdog ping" in vcom.log_tail(200)


def test_the_programs_exact_settings_survive_the_crash(vcom: Vcom, tmp_path):
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{share_echo(vcom)}")
    # A wrapped program sets 7E1 and keeps the port open while the manager is killed.
    proc = subprocess.Popen([PYTHON, "-m", "vcom", "wrap", PYTHON, "-u", "-c", textwrap.dedent(f"""
        import sys, serial
        s = serial.Serial({str(port)!r}, 19200, bytesize=7, parity="E")
        print("open", flush=True)
        sys.stdin.readline()
    """)], env=vcom.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "open\n"
        vcom.wait_status("sim:echo", lambda s: s["settings"]["data_bits"] == 7, what="7E1 at the device")
        old = manager_pid(vcom)
        os.kill(old, signal.SIGKILL)
        # Its pid file comes before its control socket: wait for the socket too before asking it.
        wait_until(lambda: manager_pid(vcom) != old and vcom.answering(), 15, "a new manager answering")
        # The new manager's connection starts from a fresh device: it must send 7E1 again.
        status = vcom.wait_status(port, lambda s: s["remote_settings"]["data_bits"] == 7, what="7E1 acknowledged")
        assert status["settings_exact"] and status["remote_settings"]["parity"] == "even"
    finally:
        proc.kill()
        proc.wait(10)


def test_shutdown_removes_the_ports_and_the_keeper(vcom: Vcom, tmp_path):
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{share_echo(vcom)}")
    pids = vcom.manager_pids()
    assert len(pids) == 2  # the keeper and the manager
    vcom.ok("shutdown")
    assert not os.path.lexists(port)
    wait_until(lambda: not vcom.manager_pids(), 15, "the keeper and the manager gone")


class FakeSystemd:
    """A service manager for one service: a NOTIFY_SOCKET it reads, and a store of descriptors."""

    def __init__(self, root: Path) -> None:
        self.path = root / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.messages: list[dict[str, str]] = []
        self.store: dict[str, int] = {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str], watchdog_usec: int | None = None) -> None:
        names = list(self.store)
        fds = [self.store[n] for n in names]
        service_env = {**env, "NOTIFY_SOCKET": str(self.path)}
        if watchdog_usec:
            service_env["WATCHDOG_USEC"] = str(watchdog_usec)
        if fds:
            service_env["LISTEN_FDS"] = str(len(fds))
            service_env["LISTEN_FDNAMES"] = ":".join(names)
        # As systemd does: the stored descriptors at 3.., LISTEN_PID naming the service's own pid.
        launcher = textwrap.dedent("""
            import os, sys
            fds = [int(f) for f in sys.argv[1].split(",") if f]
            high = [os.dup(fd) for fd in fds]
            for index, fd in enumerate(high):
                if fd != 3 + index:
                    os.dup2(fd, 3 + index)
                os.set_inheritable(3 + index, True)
            os.closerange(3 + len(fds), 4096)
            if fds:
                os.environ["LISTEN_PID"] = str(os.getpid())
            os.execv(sys.executable, [sys.executable, "-m", "vcom", "run"])
        """)
        with open(self.path.parent / "service.log", "ab") as log:  # the service's journal
            self.proc = subprocess.Popen([PYTHON, "-c", launcher, ",".join(map(str, fds))], env=service_env,
                                         pass_fds=fds, stdout=subprocess.DEVNULL, stderr=log)
        for fd in fds:
            os.close(fd)
        self.store.clear()

    def receive(self, timeout: float = 0.2) -> None:
        while select.select([self.sock], [], [], timeout)[0]:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(4 * 16))
            fds = array.array("i")
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % 4])
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(fields)
            if fields.get("FDSTORE") == "1":
                self.store[fields["FDNAME"]] = fds[0]
            else:
                for fd in fds:
                    os.close(fd)
            timeout = 0

    def seen(self, key: str, value: str = "1") -> bool:
        self.receive()
        return any(m.get(key) == value for m in self.messages)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self.receive()
        return code

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for fd in self.store.values():
            os.close(fd)
        self.sock.close()


@pytest.fixture
def refusing():
    with refusing_port() as port:
        yield port


def test_systemctl_restart_keeps_the_ports_programs_hold(vcom: Vcom, program, refusing, tmp_path):
    echo = share_echo(vcom)
    held, idle = tmp_path / "ttyHeld", tmp_path / "ttyIdle"
    vcom.add(held, f"127.0.0.1:{echo}")
    vcom.add(idle, f"tcp://127.0.0.1:{refusing}")
    vcom.ok("shutdown")  # from here on the test is systemd
    systemd = FakeSystemd(tmp_path)
    try:
        systemd.start(vcom.env, watchdog_usec=1_000_000)
        wait_until(lambda: systemd.seen("READY"), 20, "READY=1 from the service")
        wait_until(lambda: sum(m.get("WATCHDOG") == "1" for m in systemd.messages) >= 2 or systemd.receive(),
                   10, "watchdog pings")
        fd = program(held)
        pty = os.ttyname(fd)
        assert roundtrip(fd, b"before") == b"before"
        assert systemd.stop() == 0  # systemctl restart: SIGTERM first
        assert set(systemd.store) == {f"pty={held}", "state"}  # what a program holds, and the state file
        assert os.readlink(held) == pty  # kept: the next start takes it back
        assert not os.path.lexists(idle)  # nobody held it: let go, no link left to a pty that is gone
        os.write(fd, b"across the restart")
        systemd.messages.clear()
        systemd.start(vcom.env)
        wait_until(lambda: systemd.seen("READY"), 20, "READY=1 from the new service")
        assert read_exact(fd, len(b"across the restart")) == b"across the restart"
        assert os.readlink(held) == pty and os.path.islink(idle)
        assert roundtrip(fd, b"after") == b"after"
    finally:
        systemd.close()


def test_the_manager_alone_still_removes_its_ports_on_sigterm(vcom: Vcom, tmp_path):
    """`vcom run --no-keeper` (nothing keeps the descriptors): SIGTERM removes the ports, as before."""
    port = tmp_path / "ttyV0"
    with refusing_port() as nobody:
        vcom.add(port, f"tcp://127.0.0.1:{nobody}")
    vcom.ok("shutdown")
    proc = subprocess.Popen([PYTHON, "-m", "vcom", "run", "--no-keeper"], env=vcom.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: os.path.islink(port), 15, "the port")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert not os.path.lexists(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_status_json_is_unchanged_by_a_takeover(vcom: Vcom, program, tmp_path):
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{share_echo(vcom)}")
    fd = program(port)
    assert roundtrip(fd, b"x") == b"x"
    before = vcom.status(port)
    old = manager_pid(vcom)
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: manager_pid(vcom) != old and vcom.answering(), 15, "a new manager answering")
    after = vcom.wait_status(port, lambda s: s["state"] == "connected" and s["open"], what="connected again")
    assert json.dumps(sorted(before)) == json.dumps(sorted(after))
