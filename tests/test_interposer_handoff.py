"""The seccomp listener of `vcom wrap` in the manager's hands (vcom/interposer/handoff.py).

Once the manager has answered a wrapped program's call on one of its ports, it holds the program's
listener and answers every trapped call itself.  What must hold then: the program gets what it got
before (exact settings, modem lines, TIOCMIWAIT); a manager killed while it holds a call that waits
leaves no program hanging, and the supervisor answers until a new manager takes the listener again;
what a local process hands the manager that is not a sealed page and a seccomp listener of its own
is refused without harm; and a manager that may not take the listener leaves the supervisor answering.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from peers import Vcom, wait_until

from vcom.interposer import calls, handoff, seccomp


def share_echo(vcom: Vcom) -> int:
    return vcom.share("sim:echo")


def manager_pid(vcom: Vcom) -> int:
    return int((vcom.home / "vcom.pid").read_text().split()[0])


def listeners_held(pid: int) -> int:
    """How many seccomp listeners process ``pid`` holds."""
    held = 0
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            held += os.readlink(entry) == "anon_inode:seccomp notify"
        except OSError:
            pass
    return held


PROGRAM = """
    import errno, fcntl, json, sys, termios, threading, time, serial
    s = serial.Serial({port!r}, 19200, bytesize=7, parity="E")

    def frame():
        cflag = termios.tcgetattr(s.fileno())[2]
        return [cflag & termios.CSIZE == termios.CS7, bool(cflag & termios.PARENB)]

    def cts_changes():  # TIOCGICOUNT's first counter
        return int.from_bytes(fcntl.ioctl(s.fileno(), 0x545D, bytes(80))[:4], "little")

    print(json.dumps({{"frame": frame()}}))
    for line in sys.stdin:
        step = line.strip()
        if step == "wait":  # a thread waits for RI, which the loop-back plug never raises
            waited = []

            def wait():
                try:
                    fcntl.ioctl(s.fileno(), termios.TIOCMIWAIT, termios.TIOCM_RNG)
                    waited.append("answered")
                except OSError as exc:
                    waited.append(errno.errorcode[exc.errno])

            waiter = threading.Thread(target=wait, daemon=True)
            waiter.start()
            print(json.dumps({{"waiting": True}}))
        elif step == "joined":
            waiter.join(15)
            print(json.dumps({{"waited": waited}}))
        elif step == "set":  # until the settings read back exact again, within 20 s
            end = time.monotonic() + 20
            while True:
                try:
                    s.parity = "O"
                    s.parity = "E"
                    exact = frame() == [True, True]
                except (OSError, ValueError):
                    exact = False
                if exact or time.monotonic() > end:
                    break
                time.sleep(0.2)
            before = cts_changes()
            s.rts = False
            s.rts = True
            # The plug drops CTS at the remote, then raises it; each news takes a round trip, so a CTS read
            # at once may still be the one from before the drop: wait until both have been counted.
            end = time.monotonic() + 10
            while cts_changes() < before + 2 and time.monotonic() < end:
                time.sleep(0.01)
            print(json.dumps({{"frame": frame(), "cts": s.cts}}))
"""


def handed_over(vcom: Vcom, interactive, tmp_path: Path) -> tuple[Path, Any, int]:  # noqa: ANN001
    """A port, the wrapped program on it (its first call made), and the manager, once it holds the
    program's listener."""
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{share_echo(vcom)}")
    program = interactive(PROGRAM.format(port=str(port)))
    assert program.expect() == {"frame": [True, True]}
    manager = manager_pid(vcom)
    wait_until(lambda: listeners_held(manager) == 1, 15, "the manager holding the program's listener")
    return port, program, manager


def test_the_manager_answers_the_calls_once_it_holds_the_listener(vcom: Vcom, interactive, tmp_path):
    port, program, manager = handed_over(vcom, interactive, tmp_path)
    program.send("set")
    assert program.expect() == {"frame": [True, True], "cts": True}
    vcom.wait_status("sim:echo", lambda s: (s["settings"]["data_bits"], s["settings"]["parity"]) == (7, "even"),
                     what="7E1 at the device")
    status = vcom.status(port)
    assert status["interposed"] == ["seccomp"] and status["settings_exact"] is True
    # The program ends: the manager lets go of its listener, and the supervisor exits with the program.
    program.proc.stdin.close()
    assert program.proc.wait(15) == 0
    wait_until(lambda: listeners_held(manager) == 0, 15, "the manager letting go of the listener")


def test_a_manager_killed_while_it_holds_a_call_leaves_no_program_waiting(vcom: Vcom, interactive, tmp_path):
    _, program, old = handed_over(vcom, interactive, tmp_path)
    program.send("wait")
    assert program.expect() == {"waiting": True}
    time.sleep(0.3)  # the TIOCMIWAIT is in the manager's hands, and waits
    os.kill(old, signal.SIGKILL)
    # The supervisor answers what the dead manager held: the call runs on the pty, which refuses it.
    program.send("joined")
    waited = program.expect()["waited"]
    assert len(waited) == 1 and waited[0] != "answered", waited
    # Until a manager answers again the supervisor passes the calls to the kernel; then the settings are
    # exact again, and the new manager takes the listener.
    wait_until(lambda: manager_pid(vcom) != old, 15, "a new manager")
    program.send("set")
    assert program.expect(timeout=40) == {"frame": [True, True], "cts": True}
    new = manager_pid(vcom)

    def taken_again() -> bool:  # the supervisor offers the listener again with a call the manager answers
        program.send("set")
        assert program.expect() == {"frame": [True, True], "cts": True}
        return listeners_held(new) == 1

    wait_until(taken_again, 30, "the new manager holding the program's listener", interval=0.5)


def test_a_manager_that_shuts_down_while_it_holds_a_call_leaves_no_program_waiting(vcom: Vcom, interactive,
                                                                                    tmp_path):
    _, program, manager = handed_over(vcom, interactive, tmp_path)
    program.send("wait")
    assert program.expect() == {"waiting": True}
    time.sleep(0.3)
    vcom.ok("shutdown")  # the manager lets go of the listener, answering what it holds, and exits
    wait_until(lambda: not Path(f"/proc/{manager}").exists(), 15, "the manager gone")
    program.send("joined")
    waited = program.expect()["waited"]
    assert len(waited) == 1 and waited[0] != "answered", waited
    program.proc.stdin.close()
    assert program.proc.wait(15) == 0  # the supervisor, reading the listener again, sees the program out


# A manager that may not take another process's descriptors, as one without the ptrace right over the
# supervisor (a hardened kernel's ptrace scope, another user): pidfd_getfd fails with EPERM in it.
_NO_GETFD = """
import os, sys
from vcom.interposer import seccomp as s
code = s._assemble([(s._LD_W_ABS, 0, 0, 0), ("jeq", {nr}, "refuse", "allow"),  # the syscall: pidfd_getfd?
                    ("label", "allow"), (s._RET_K, 0, 0, s._RET_ALLOW),
                    ("label", "refuse"), (s._RET_K, 0, 0, 0x00050000 | 1)])  # SECCOMP_RET_ERRNO | EPERM
os.close(s.install_filter(code, no_new_privs=True))  # a listener it never uses: nothing is notified
os.execv(sys.executable, [sys.executable, "-m", "vcom", "run"])
"""


def test_a_manager_that_may_not_take_the_listener_leaves_the_supervisor_answering(vcom: Vcom, interactive,
                                                                                   tmp_path):
    if not seccomp.supported():
        pytest.skip("no seccomp user notification here")
    launcher = _NO_GETFD.format(nr=seccomp._PIDFD_GETFD)
    with open(vcom.home / "foreground.log", "ab") as log:
        launched = subprocess.Popen([sys.executable, "-c", launcher], env=vcom.env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log)
    try:
        _refused_handoff(vcom, interactive, tmp_path)
    finally:
        vcom.close()  # the keeper the launcher became, and its manager
        launched.wait(15)


def _refused_handoff(vcom: Vcom, interactive, tmp_path: Path) -> None:  # noqa: ANN001
    wait_until(vcom.answering, 15, "the manager answering")
    manager = manager_pid(vcom)  # the keeper's child, which carries the filter too
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{share_echo(vcom)}")
    program = interactive(PROGRAM.format(port=str(port)))
    assert program.expect() == {"frame": [True, True]}
    wait_until(lambda: "cannot take its seccomp listener" in vcom.log_tail(200), 15, "the handoff refused")
    # The supervisor reads its listener again and answers every call by asking, as before the offer; the
    # last calls come past the 5 s after which a handoff that failed for another reason is offered again.
    for step in range(3):
        if step:
            time.sleep(3)
        program.send("set")
        assert program.expect() == {"frame": [True, True], "cts": True}
        assert listeners_held(manager) == 0
    vcom.wait_status("sim:echo", lambda s: (s["settings"]["data_bits"], s["settings"]["parity"]) == (7, "even"),
                     what="7E1 at the device")
    assert vcom.status(port)["interposed"] == ["seccomp"]
    program.proc.stdin.close()
    assert program.proc.wait(15) == 0


def request(sock_path: Path, lines: list[bytes]) -> bytes:
    """Send ``lines`` on a new interposer connection; the first answer line."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(sock_path))
        sock.sendall(b"".join(lines))
        with sock.makefile("rb") as answers:
            return answers.readline()


@pytest.mark.parametrize("what", ["a file", "an unsealed page", "a page of the wrong size", "no such fd"])
def test_what_is_not_a_listener_and_a_sealed_page_is_refused(vcom: Vcom, tmp_path, what):
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{share_echo(vcom)}")
    opened = []
    try:
        plain = os.open(tmp_path / "plain", os.O_RDWR | os.O_CREAT, 0o600)
        opened.append(plain)
        if what == "a file":
            page = handoff.held_page()[0]
            listener = plain
        elif what == "an unsealed page":
            page = os.memfd_create("unsealed", os.MFD_ALLOW_SEALING)
            os.ftruncate(page, handoff.HELD_SIZE)
            listener = plain
        elif what == "a page of the wrong size":
            page = os.memfd_create("small", os.MFD_ALLOW_SEALING)
            os.ftruncate(page, 8)
            fcntl.fcntl(page, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            listener = plain
        else:
            page, listener = 999, 998
        if page != 999:
            opened.append(page)
        answer = request(vcom.home / "interposer.sock",
                         [b"vcom1 seccomp %d\n" % os.getpid(), b"handoff 0 %d %d %d\n" % (listener, page, os.getpid())])
        assert answer == b"no\n"
    finally:
        for fd in opened:
            os.close(fd)
    assert listeners_held(manager_pid(vcom)) == 0
    # The manager serves on.
    assert vcom.status(port)["device"] == str(port)


def test_the_ids_a_dead_manager_may_have_held() -> None:
    fd, page = handoff.held_page()
    try:
        handoff.note_highest(page, 2**64 - 3)
        struct.pack_into("=Q", page, 8 * 5, 41)
        ids = handoff.held_ids(page)
        after = [(2**64 - 3 + k) % 2**64 for k in range(1, handoff.PROBED + 1)]
        assert ids == sorted([41, *after])  # the noted one, and those right after the highest (wrapping)
        handoff.clear(page)
        assert handoff.held_ids(page) == []
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 8)  # sealed: the manager's mapping can never be cut short under it
    finally:
        page.close()
        os.close(fd)


def test_only_ioctls_are_read_as_ioctls() -> None:
    # A listener handed over by another process may come from a filter that traps other calls too.
    from vcom.interposer.seccomp import Notification, filter_program

    ioctl_nr = {"x86_64": 16, "aarch64": 29, "riscv64": 29}[os.uname().machine]
    arch = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7, "riscv64": 0xC00000F3}[os.uname().machine]
    assert filter_program()  # the machine is one vcom's filter knows
    args = (3, 0x5402, 0, 0, 0, 0)
    assert seccomp.is_ioctl(Notification(1, os.getpid(), ioctl_nr, arch, args))
    assert not seccomp.is_ioctl(Notification(1, os.getpid(), 1, arch, args))  # write(2) on x86_64
    assert not seccomp.is_ioctl(Notification(1, os.getpid(), ioctl_nr, 0x12345678, args))


CALLERS = """
    import fcntl, os, pty, sys, termios, threading
    from vcom.interposer import seccomp
    _, tty = pty.openpty()  # a terminal that is no vcom port: the manager lets the kernel answer
    listener = seccomp.install_filter(seccomp.filter_program(), no_new_privs=True)
    print(listener, flush=True)
    sys.stdin.readline()

    def call():
        fcntl.ioctl(tty, termios.TCGETS, bytes(60))
        os.write(1, b"x")

    threads = [threading.Thread(target=call) for _ in range({count})]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
"""


def blocked_in_ioctl(pid: int) -> int:
    """How many threads of ``pid`` are inside ioctl(2) (x86-64: 16; aarch64, riscv64: 29)."""
    number = {"x86_64": "16", "aarch64": "29", "riscv64": "29"}[os.uname().machine]
    blocked = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with open(task / "syscall") as syscall:
            blocked += syscall.read().split(" ", 1)[0] == number
    return blocked


@contextlib.contextmanager
def trapped_callers(count: int) -> Iterator[tuple[subprocess.Popen[bytes], int, mmap.mmap]]:
    """A child whose ``count`` threads wait in a trapped TCGETS on a plain pty; its listener (taken from it,
    as a manager takes a supervisor's) and a held page, for a Handed.  Everything is closed at the end."""
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CALLERS.format(count=count))],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    page_fd, page = handoff.held_page()
    listener = -1
    try:
        assert child.stdin is not None and child.stdout is not None
        pidfd = os.pidfd_open(child.pid)
        try:
            listener = seccomp.take_fd(pidfd, int(child.stdout.readline()))
        finally:
            os.close(pidfd)
        child.stdin.write(b"go\n")
        child.stdin.flush()
        wait_until(lambda: blocked_in_ioctl(child.pid) == count, 15, f"{count} threads waiting in a trapped ioctl")
        yield child, listener, page
    finally:
        if listener >= 0:
            os.close(listener)
        page.close()
        os.close(page_fd)
        if child.poll() is None:
            child.kill()
        child.wait()
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()


def test_one_wake_up_answers_the_calls_already_waiting_and_no_more_than_drain(tmp_path) -> None:
    """A program's next trapped call is usually waiting by the time its last one is answered: the manager
    takes it in the same wake-up of its loop.  But one wake-up answers at most DRAIN calls, so that a
    program making calls from many threads cannot hold up the manager's other ports."""
    count = handoff.DRAIN + 4
    with trapped_callers(count) as (child, listener, page):
        answered: list[int] = []

        class Counted(handoff.Handed):
            def respond(self, n, **how):  # noqa: ANN001, ANN003
                answered.append(n.id)
                super().respond(n, **how)

        handed = Counted(listener, page, lambda rdev: None, lambda *a: None, lambda *a: None, lambda h: None)
        handed.readable()
        assert len(answered) == handoff.DRAIN
        handed.readable()  # the rest, and it returns when no call is left waiting
        assert len(set(answered)) == count
        assert child.stdout.read(count) == b"x" * count  # every call returned to its thread
        assert child.wait(15) == 0


def test_a_fault_in_answering_lets_the_kernel_run_the_calls_and_is_logged_once(tmp_path, caplog) -> None:
    """A fault of the manager's own while it answers a trapped call (a bug): the kernel runs the call as
    the program made it, and a fault that every call meets costs one line with its traceback, not one
    per call."""
    count = 6
    with trapped_callers(count) as (child, listener, page):

        class Broken(handoff.Handed):
            def locate(self, n):  # noqa: ANN001, ANN202
                raise RuntimeError("a fault")

        handed = Broken(listener, page, lambda rdev: None, lambda *a: None, lambda *a: None, lambda h: None)
        calls._faults.close()  # what an earlier run in this process logged within the minute
        with caplog.at_level(logging.INFO, logger="vcom.interposer.calls"):
            handed.readable()
        assert child.stdout.read(count) == b"x" * count  # the kernel ran every call: each returned
        assert child.wait(15) == 0
        faults = [r for r in caplog.records if "answering a trapped ioctl" in r.getMessage()]
        assert len(faults) == 1 and faults[0].exc_info is not None and faults[0].levelno == logging.ERROR
