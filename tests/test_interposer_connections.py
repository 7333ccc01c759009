"""The interposer's connections to the manager, kept between calls.

The preload library keeps one connection per process and the seccomp supervisor a few per program, so
that a call costs a line each way.  Kept state is where programs break things: a program that closes
descriptors it does not know about and reuses the numbers, a fork that shares the connection with a
child, a manager that is replaced while a program holds a kept connection, a user with many programs.
Each test checks what the program is told (its own 7E1 read back, the DTR it set), which comes from the
manager only: a crossed or lost answer makes the call fall back to the kernel's pty answer (8N1, ENOTTY).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import textwrap

import pytest
from peers import PYTHON, Vcom, wait_until

from vcom.interposer.server import MAX_CONNECTIONS_PER_USER

OPEN_7E1 = """
    import errno, fcntl, json, os, socket, struct, sys, termios, serial
    def frame(fd):
        cflag = termios.tcgetattr(fd)[2]
        return (cflag & termios.CSIZE == termios.CS7, bool(cflag & termios.PARENB))
    def dtr(fd, on):
        try:
            fcntl.ioctl(fd, termios.TIOCMBIS if on else termios.TIOCMBIC, struct.pack("i", termios.TIOCM_DTR))
            bits = struct.unpack("i", fcntl.ioctl(fd, termios.TIOCMGET, struct.pack("i", 0)))[0]
            return bool(bits & termios.TIOCM_DTR)
        except OSError as exc:
            return errno.errorcode[exc.errno]
    s = serial.Serial({port!r}, 19200, bytesize=7, parity="E")
    fd = s.fileno()
"""


def _wrapped(vcom: Vcom, mode: str, script: str, **kwargs) -> subprocess.Popen[str]:
    return subprocess.Popen([PYTHON, "-m", "vcom", "wrap", *(["--preload"] if mode == "preload" else []),
                             PYTHON, "-u", "-c", textwrap.dedent(script)],
                            env=vcom.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _result(proc: subprocess.Popen[str], timeout: float = 60) -> dict:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_a_program_that_closes_and_reuses_the_librarys_descriptor_is_still_answered(vcom: Vcom, tmp_path):
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{vcom.share('sim:echo')}")
    # As a daemon does: close every socket it did not open, then reuse the numbers for its own sockets.
    script = OPEN_7E1.format(port=str(port)) + """
    before = frame(fd)
    mine = []
    for entry in os.listdir("/proc/self/fd"):
        n = int(entry)
        try:
            if n > 2 and os.readlink(f"/proc/self/fd/{n}").startswith("socket:"):
                a, b = socket.socketpair()
                os.dup2(a.fileno(), n)  # closes n and puts a socket of its own there
                a.close()
                mine.append((n, b))
        except OSError:
            pass
    after = [frame(fd) for _ in range(20)]
    lines = [dtr(fd, i % 2 == 0) for i in range(10)]
    stray = 0
    for _, b in mine:
        b.setblocking(False)
        try:
            stray += len(b.recv(4096))
        except BlockingIOError:
            pass
    print(json.dumps({"before": before, "replaced": len(mine), "after": sorted(set(map(tuple, after))),
                      "dtr": lines, "stray": stray}))
    """
    seen = _result(_wrapped(vcom, "preload", script))
    assert seen["before"] == [True, True]
    assert seen["replaced"] >= 1  # the library's kept connection was among them
    assert seen["after"] == [[True, True]]
    assert seen["dtr"] == [i % 2 == 0 for i in range(10)]
    assert seen["stray"] == 0  # nothing meant for the manager went into the program's own sockets


def test_a_forked_child_and_its_parent_each_get_their_own_answers(vcom: Vcom, tmp_path):
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{vcom.share('sim:echo')}")
    # The parent has a kept connection when it forks; both then call at once, many times.
    script = OPEN_7E1.format(port=str(port)) + """
    assert frame(fd) == (True, True)
    child = os.fork()
    wrong = 0
    for i in range(300):
        if child == 0:
            wrong += dtr(fd, True) is not True
        else:
            wrong += frame(fd) != (True, True)
    if child == 0:
        os._exit(min(wrong, 100))
    _, status = os.waitpid(child, 0)
    print(json.dumps({"parent_wrong": wrong, "child_wrong": os.waitstatus_to_exitcode(status)}))
    """
    assert _result(_wrapped(vcom, "preload", script)) == {"parent_wrong": 0, "child_wrong": 0}


@pytest.mark.parametrize("mode", ["seccomp", "preload"])
def test_calls_are_answered_by_the_manager_that_replaced_a_killed_one(vcom: Vcom, tmp_path, mode):
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{vcom.share('sim:echo')}")
    script = OPEN_7E1.format(port=str(port)) + """
    print(json.dumps({"frame": frame(fd), "dtr": dtr(fd, False)}))
    sys.stdin.readline()
    print(json.dumps({"frame": frame(fd), "dtr": dtr(fd, True)}))
    """
    proc = _wrapped(vcom, mode, script, stdin=subprocess.PIPE)
    try:
        assert json.loads(proc.stdout.readline()) == {"frame": [True, True], "dtr": False}
        old = vcom.manager_pid()
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: vcom.manager_pid() != old and vcom.answering(), 15, "a new manager answering")
        vcom.wait_status(port, lambda s: s["state"] == "connected", what="the port connected again")
        proc.stdin.write("next\n")
        proc.stdin.flush()
        # The kept connection died with the old manager: the calls go to the new one.
        assert json.loads(proc.stdout.readline()) == {"frame": [True, True], "dtr": True}
    finally:
        proc.kill()
        proc.wait(10)


def test_a_user_at_the_connection_limit_gets_room_from_their_idle_connections(vcom: Vcom, tmp_path):
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{vcom.share('sim:echo')}")
    # As many kept connections as a user may have, each idle after one answered request.
    idle = []
    try:
        for _ in range(MAX_CONNECTIONS_PER_USER):
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(10)
            s.connect(str(vcom.home / "interposer.sock"))
            s.sendall(f"vcom1 preload {os.getpid()}\ntcgets 1\n".encode())
            assert s.recv(64) == b"no\n"
            idle.append(s)
        script = OPEN_7E1.format(port=str(port)) + """
    print(json.dumps({"frame": frame(fd), "dtr": dtr(fd, False)}))
        """
        assert _result(_wrapped(vcom, "preload", script)) == {"frame": [True, True], "dtr": False}
        # Ten more at once (accepted in one pass of the loop): each takes the place of a different idle one.
        burst = []
        for _ in range(10):
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(10)
            s.connect(str(vcom.home / "interposer.sock"))
            burst.append(s)
        for s in burst:
            s.sendall(f"vcom1 preload {os.getpid()}\ntcgets 1\n".encode())
        assert [s.recv(64) for s in burst] == [b"no\n"] * 10
        idle += burst
        # The oldest idle ones made room (one for the program, which has left since, and nine or ten
        # for the burst); the newest are still there.
        closed = []
        for s in idle:
            s.setblocking(False)
            try:
                closed.append(s.recv(64) == b"")
            except BlockingIOError:
                closed.append(False)
        assert closed[0] and not closed[-1], closed
        assert sum(closed) >= 10, closed
    finally:
        for s in idle:
            s.close()
    assert "refused another" not in vcom.log_tail(400)


def test_a_burst_of_threads_leaves_the_supervisor_a_few_idle_connections(vcom: Vcom, tmp_path):
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{vcom.share('sim:echo')}")
    # 16 threads call at once, each on a connection of its own for the moment; afterwards the supervisor
    # keeps a few, not one per thread that was ever busy.
    script = OPEN_7E1.format(port=str(port)) + """
    import threading
    wrong = []
    def calls():
        wrong.append(sum(frame(fd) != (True, True) for _ in range(100)))
    threads = [threading.Thread(target=calls) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"wrong": sum(wrong)}))
    sys.stdin.readline()
    """
    proc = _wrapped(vcom, "seccomp", script, stdin=subprocess.PIPE)
    try:
        assert json.loads(proc.stdout.readline()) == {"wrong": 0}
        sockets = []
        for entry in os.listdir(f"/proc/{proc.pid}/fd"):
            with contextlib.suppress(FileNotFoundError):  # closed since the listing
                if os.readlink(f"/proc/{proc.pid}/fd/{entry}").startswith("socket:"):
                    sockets.append(entry)
        # Its idle connections to the manager (at most 8 in all) and asyncio's own socket pair.
        assert len(sockets) <= 8 + 2, sockets
    finally:
        proc.kill()
        proc.wait(10)
