"""Local sockets and shares cannot be flooded: bounded per user (per address for a share's clients), and
running out of descriptors pauses accepting with one log line, never a traceback per accept.

The flooding users are real other uids (``nobody``): a child process started with that uid opens
hundreds of connections and holds them while the test looks at the manager (its descriptors, its log, its
answers).  The share's flood comes from 127.0.0.1 while a legitimate client connects from 127.0.0.2.
"""

from __future__ import annotations

import json
import os
import pwd
import select
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import PYTHON, Vcom, wait_until

from vcom import control
from vcom.controlserver import MAX_CONNECTIONS_PER_USER as CONTROL_PER_USER
from vcom.interposer.server import MAX_CONNECTIONS_PER_USER as INTERPOSER_PER_USER

NOBODY = pwd.getpwnam("nobody")

def _flood(path: str, count: int, line: bytes, report, stop: int) -> None:  # noqa: ANN001
    """In the flooding child: open ``count`` connections (sending ``line`` on each), report how many the
    manager closed or answered, and hold the rest until ``stop`` is closed."""
    socks, failed = [], 0
    for _ in range(count):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            if line:
                sock.sendall(line + b"\n")
        except OSError:
            failed += 1
            sock.close()
            continue
        socks.append(sock)
    report.write(json.dumps({"connected": len(socks), "failed": failed}) + "\n")
    report.flush()
    closed, answers = 0, []
    waiting = list(socks)
    deadline = time.monotonic() + 20
    while waiting and time.monotonic() < deadline:
        ready, _, _ = select.select(waiting, [], [], 0.5)
        if not ready:
            break
        for sock in ready:
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if data:
                answers.append(data.decode(errors="replace"))
            else:
                closed += 1
                waiting.remove(sock)
    report.write(json.dumps({"closed": closed, "answers": answers[:200]}) + "\n")
    report.flush()
    os.read(stop, 1)


class Flood:
    """A child process running as ``nobody`` that floods ``path``; ``result()`` once it has seen what the
    manager did; ``stop()`` lets its connections go."""

    def __init__(self, path: Path, count: int, line: str = "") -> None:
        read_end, write_end = os.pipe()
        stop_read, self._stop = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(read_end)
                os.close(self._stop)
                os.setgroups([])
                os.setresgid(NOBODY.pw_gid, NOBODY.pw_gid, NOBODY.pw_gid)
                os.setresuid(NOBODY.pw_uid, NOBODY.pw_uid, NOBODY.pw_uid)
                _flood(str(path), count, line.encode(), os.fdopen(write_end, "w"), stop_read)
            finally:
                os._exit(0)
        os.close(write_end)
        os.close(stop_read)
        self.pid = pid
        self._report = os.fdopen(read_end)
        self.opened = json.loads(self._line())

    def _line(self) -> str:
        ready, _, _ = select.select([self._report], [], [], 60)
        assert ready, "the flooding process did not report"
        line = self._report.readline()
        assert line, "the flooding process ended early"
        return line

    def result(self) -> dict:
        return json.loads(self._line())

    def stop(self) -> None:
        if self.pid:
            os.close(self._stop)
            os.waitpid(self.pid, 0)
            self._report.close()
            self.pid = 0


@pytest.fixture
def home() -> Iterator[Vcom]:
    """A vcom home that another user can reach (the sockets' own modes decide who may connect)."""
    base = Path(tempfile.mkdtemp(prefix="vcom-flood-", dir="/tmp"))
    os.chmod(base, 0o755)
    vcom = Vcom(base / "h")
    os.chmod(vcom.home, 0o755)
    try:
        yield vcom
    finally:
        vcom.close()
        shutil.rmtree(base, ignore_errors=True)


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _log(vcom: Vcom) -> str:
    return "\n".join(path.read_text(errors="replace") for path in vcom.home.glob("*.log"))


def test_another_user_flooding_the_interposer_socket_is_held_to_its_share(home: Vcom):
    home.ok("share", "sim:echo", "--listen", "127.0.0.1:0")  # starts the manager
    pid = home.manager_pid()
    before = _fds(pid)
    flood = Flood(home.home / "interposer.sock", 3 * INTERPOSER_PER_USER)
    try:
        seen = flood.result()
        # Everything past the user's share was closed at once; the rest is held, not more.
        assert flood.opened["connected"] == 3 * INTERPOSER_PER_USER, flood.opened
        assert seen["closed"] >= 2 * INTERPOSER_PER_USER, seen
        assert _fds(pid) <= before + INTERPOSER_PER_USER + 8
        assert home.answering()  # the manager still answers its own users
    finally:
        flood.stop()
    wait_until(lambda: _fds(pid) <= before + 2, 15, "the flood's connections released")
    log = _log(home)
    refusals = [line for line in log.splitlines() if "interposer socket: uid" in line]
    assert 1 <= len(refusals) <= 2, refusals  # once a minute, however many were refused
    assert "Traceback" not in log


def test_another_user_flooding_the_control_socket_is_refused_past_its_share(home: Vcom):
    home.ok("share", "sim:echo", "--listen", "127.0.0.1:0")
    os.chmod(home.home / "vcom.sock", 0o666)  # as if the file system let everyone in: the manager decides
    # Saying nothing, each connection holds its place while the manager waits for a request (5 s).
    flood = Flood(home.home / "vcom.sock", CONTROL_PER_USER + 50)
    try:
        seen = flood.result()
        too_many = [a for a in seen["answers"] if "too many connections to the manager from this user" in a]
        assert len(too_many) == 50, seen["answers"][:5]
        assert control.request(home.home / "vcom.sock", "list", timeout=10)["ok"]  # root still gets in
    finally:
        flood.stop()
    assert "Traceback" not in _log(home)


def test_out_of_descriptors_the_manager_pauses_accepting_and_says_so_once(home: Vcom):
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit is not installed")
    log_path = home.home / "limited.log"
    with open(log_path, "ab") as log:
        manager = subprocess.Popen(["prlimit", "--nofile=160:160", PYTHON, "-m", "vcom", "run", "--no-keeper"],
                                   env=home.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        wait_until(lambda: manager.poll() is not None or home.answering(), 15, "the manager answering")
        assert manager.poll() is None, log_path.read_text()
        flood = Flood(home.home / "interposer.sock", 220)  # past 160 descriptors: accept() fails with EMFILE
        try:
            flood.result()
            wait_until(lambda: "not accepting connections for a second" in log_path.read_text(), 15,
                       "the manager to say it is out of descriptors")
        finally:
            flood.stop()
        wait_until(home.answering, 15, "the manager answering again after the flood")
        text = log_path.read_text(errors="replace")
        assert "Traceback" not in text, text[-3000:]
        said = [line for line in text.splitlines() if "not accepting connections for a second" in line]
        assert 1 <= len(said) <= 2, said
        assert "too many open files" in said[0]
    finally:
        manager.terminate()
        manager.wait(timeout=15)


def test_a_share_flooded_with_idle_clients_still_takes_a_legitimate_one(vcom: Vcom):
    port = vcom.share("sim:echo", "--idle-timeout", "2")
    idle = []
    for _ in range(20):  # far more than the 8 one address may hold
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        idle.append(sock)
    try:
        status = vcom.wait_status("sim:echo", lambda s: s["refusals"].get("per_address", 0) == 12,
                                  what="the flood held to 8 clients from its address")
        assert len(status["clients"]) == 8
        legit = socket.socket()
        legit.bind(("127.0.0.2", 0))  # another host, as far as the share can tell
        legit.settimeout(10)
        legit.connect(("127.0.0.1", port))
        with legit:
            legit.sendall(b"\xff\xfd\x00")  # DO BINARY: an RFC 2217 client speaking, then data
            deadline = time.monotonic() + 20
            got = b""
            while b"hello" not in got and time.monotonic() < deadline:
                legit.sendall(b"hello")
                got += legit.recv(4096)
            assert b"hello" in got, got
        # Traffic to any client counts as activity (as ser2net's timeout counts it): once the legitimate client
        # has gone, the idle ones have had nothing either way for 2 s and are closed, making room again.
        status = vcom.wait_status("sim:echo", lambda s: s["idle_disconnects"] == 8 and not s["clients"], timeout=30,
                                  what="the idle clients closed")
        assert status["refused_clients"] == 12
        with socket.create_connection(("127.0.0.1", port), timeout=10) as again:
            vcom.wait_status("sim:echo", lambda s: len(s["clients"]) == 1, what="a client from the flooding address")
            again.sendall(b"\xff\xfd\x00hi again")
    finally:
        for sock in idle:
            sock.close()
    log = (vcom.home / "vcom.log").read_text()
    assert len([line for line in log.splitlines() if "refused 127.0.0.1" in line]) == 1  # one line for twelve
