"""The seccomp supervisor answers TCGETS from the views it kept (vcom.interposer.viewcache), and stays exact.

End to end: a program under ``vcom wrap`` reads its termios again and again,
and another program changes the port meanwhile, through an interposer or
not; what the first one reads must be what the manager would answer.  Unit
level: the cache against a manager played by the test on a real Unix socket,
line by line.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import socket
import struct
import subprocess
import termios
import textwrap

import pytest
from peers import PYTHON, Vcom, wrap_command

from vcom.interposer import protocol
from vcom.interposer.viewcache import ViewCache
from vcom.termio import Termios2

# A wrapped program that sets 7 data bits and even parity (the pty keeps 8 and none), then reads its
# termios twice per step: the second read of a step is one the supervisor can answer from what it kept.
READER = """
    import json, os, sys, termios
    fd = os.open({port!r}, os.O_RDWR | os.O_NOCTTY)
    t = termios.tcgetattr(fd)
    t[0] = t[1] = t[3] = 0
    t[2] = (t[2] & ~termios.CSIZE) | termios.CS7 | termios.PARENB | termios.CREAD | termios.CLOCAL
    termios.tcsetattr(fd, termios.TCSANOW, t)

    def frame():
        cflag = termios.tcgetattr(fd)[2]
        bits = {{termios.CS5: 5, termios.CS6: 6, termios.CS7: 7, termios.CS8: 8}}[cflag & termios.CSIZE]
        return [bits, bool(cflag & termios.PARENB)]

    while True:
        print(json.dumps([frame(), frame(), frame()]), flush=True)
        if not sys.stdin.readline():
            break
"""

# Another program on the same port: 8 data bits, no parity, all else as the port has it.  The pty's termios
# comes out bit for bit what it was (it forces 8 bits and no parity anyway): only the manager knows that
# the view changed.
WRITER = """
    import json, os, termios
    fd = os.open({port!r}, os.O_RDWR | os.O_NOCTTY)
    t = termios.tcgetattr(fd)
    t[2] = (t[2] & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    termios.tcsetattr(fd, termios.TCSANOW, t)
    print(json.dumps(termios.tcgetattr(fd)[2] & termios.CSIZE == termios.CS8))
"""


@pytest.fixture
def port(vcom: Vcom, tmp_path):
    path = tmp_path / "ttyV0"
    vcom.add(path, f"127.0.0.1:{vcom.share('sim:echo')}", "--connect", "always")
    vcom.wait_status(path, lambda s: s["state"] == "connected", what="connected")
    return path


@pytest.fixture
def reader(port, interactive):
    return interactive(READER.format(port=str(port)))


@pytest.mark.parametrize("mode", ["seccomp", "preload"])
def test_a_kept_view_follows_a_change_made_through_another_interposer(vcom: Vcom, port, reader, mode):
    assert reader.expect() == [[7, True]] * 3
    writer = subprocess.run(wrap_command(mode, PYTHON, "-c", textwrap.dedent(WRITER.format(port=str(port)))),
                            env=vcom.env, capture_output=True, text=True, timeout=60)
    assert writer.returncode == 0 and writer.stdout.strip() == "true", writer.stderr
    # Same pty termios as before, another view: only the manager's notice can tell the supervisor.
    reader.send()
    assert reader.expect() == [[8, False]] * 3


def test_a_kept_view_follows_a_program_that_is_not_interposed(vcom: Vcom, port, reader):
    """A change the kernel reports and the manager notices ends the view a wrapped program set, even when
    the pty's termios is set back to what it was before the reader looks again."""
    assert reader.expect() == [[7, True]] * 3
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
    try:
        before = termios.tcgetattr(fd)
        changed = list(before)
        changed[4] = changed[5] = termios.B4800
        termios.tcsetattr(fd, termios.TCSANOW, changed)
        vcom.wait_status(port, lambda s: s["settings"]["baud"] == 4800, what="4800 baud seen")
        termios.tcsetattr(fd, termios.TCSANOW, before)
        vcom.wait_status(port, lambda s: s["settings"]["baud"] != 4800, what="the speed set back")
        reader.send()
        assert reader.expect() == [[8, False]] * 3  # what the pty keeps, as the manager answers now
    finally:
        os.close(fd)


# A wrapped program that switches between frames whose pty termios is bit for bit the same (the pty keeps
# 8 bits and no parity whatever is asked), reading each back: glibc's tcsetattr reads it too, and fails
# with EINVAL when the data bits or parity did not stick.
SWITCHER = """
    import json, os, termios
    fd = os.open({port!r}, os.O_RDWR | os.O_NOCTTY)
    frames = {{"7E": termios.CS7 | termios.PARENB, "8N": termios.CS8,
              "7O": termios.CS7 | termios.PARENB | termios.PARODD, "5N": termios.CS5}}
    seen = []
    for name in ["7E", "8N", "7O", "8N", "5N", "7E", "7E", "8N"] * 3:
        t = termios.tcgetattr(fd)
        t[2] = (t[2] & ~(termios.CSIZE | termios.PARENB | termios.PARODD)) | frames[name]
        termios.tcsetattr(fd, termios.TCSANOW, t)
        got = termios.tcgetattr(fd)[2] & (termios.CSIZE | termios.PARENB | termios.PARODD)
        seen.append(name if got == frames[name] else f"{{name}} read back as {{got:#o}}")
    print(json.dumps(seen))
"""


def test_own_changes_read_back_exactly_without_notices(vcom: Vcom, port):
    """The supervisor is not told of its own changes on its watch: it must take each change's view from its
    answer.  Every frame here has the same pty termios, so a view kept from before a change would be
    answered after it (and glibc's tcsetattr would fail)."""
    seen = vcom.wrap(SWITCHER.format(port=str(port)))
    assert seen == ["7E", "8N", "7O", "8N", "5N", "7E", "7E", "8N"] * 3


# -- the cache alone, against a manager played by the test

RDEV = 34816
PTY = Termios2(0, 0, termios.CS8 | termios.CREAD, 0, 0, bytes(19), 9600, 9600)
VIEW_7E1 = Termios2(0, 0, termios.CS7 | termios.PARENB | termios.CREAD, 0, 0, bytes(19), 9600, 9600)
VIEW_8N1 = Termios2(0, 0, termios.CS8 | termios.CREAD, 0, 0, bytes(19), 9600, 9600)


class Manager:
    """The manager's side of one watch connection, written and read by the test."""

    def __init__(self, path: str) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(4)
        self.listener.settimeout(5)
        self.peer: socket.socket | None = None
        self.got = b""

    def accept(self) -> None:
        self.peer, _ = self.listener.accept()
        self.peer.settimeout(5)

    def read_line(self) -> bytes:
        assert self.peer is not None
        while b"\n" not in self.got:
            chunk = self.peer.recv(4096)
            assert chunk, "the cache closed its watch connection"
            self.got += chunk
        line, _, self.got = self.got.partition(b"\n")
        return line

    def expect_watch(self, rdev: int, *, connection: str = "same") -> None:
        """The cache's next line asks to watch ``rdev``; on a ``connection`` that is "new" (header first)."""
        if connection == "new":
            self.accept()
            assert self.read_line() == protocol.header("seccomp", 4242).rstrip(b"\n")
        assert self.read_line() == f"watch {rdev}".encode()

    def say(self, data: bytes) -> None:
        assert self.peer is not None
        self.peer.sendall(data)

    def close(self) -> None:
        if self.peer is not None:
            self.peer.close()
        self.listener.close()


@pytest.fixture
def manager(tmp_path):
    played = Manager(str(tmp_path / "interposer.sock"))
    yield played
    played.close()


@pytest.fixture
def cache(manager: Manager):
    kept = ViewCache(manager.listener.getsockname(), 4242)
    yield kept
    kept.close()


def watched(cache: ViewCache, manager: Manager, generation: int = 3) -> None:
    """A first look asks for the watch; answer it (the view's generation then is ``generation``)."""
    assert cache.lookup(RDEV, PTY) is None
    manager.expect_watch(RDEV, connection="new")
    manager.say(protocol.ok(generation))


def test_the_cache_answers_only_views_of_the_generation_its_watch_knows(cache: ViewCache, manager: Manager):
    cache.keep(RDEV, 3, VIEW_7E1, PTY)  # not watched yet: not kept
    watched(cache, manager, generation=3)
    assert cache.lookup(RDEV, PTY) is None
    cache.keep(RDEV, 2, VIEW_7E1, PTY)  # made before the newest change: not kept
    assert cache.lookup(RDEV, PTY) is None
    cache.keep(RDEV, 3, VIEW_7E1, PTY)
    assert cache.lookup(RDEV, PTY) == VIEW_7E1
    other_pty = Termios2(0, 0, termios.CS8 | termios.CREAD, 0, 0, bytes(19), 4800, 4800)
    assert cache.lookup(RDEV, other_pty) is None  # a pty termios not seen: the manager is asked
    assert cache.lookup(RDEV + 1, PTY) is None  # another port: its own watch
    manager.expect_watch(RDEV + 1)


def test_a_notice_ends_the_kept_views_and_an_answer_made_before_it(cache: ViewCache, manager: Manager):
    watched(cache, manager, generation=3)
    cache.keep(RDEV, 3, VIEW_7E1, PTY)
    manager.say(protocol.notice("changed", RDEV, 4))  # a change while a view request was out...
    cache.keep(RDEV, 3, VIEW_7E1, PTY)  # ...whose answer was made before it
    assert cache.lookup(RDEV, PTY) is None
    cache.keep(RDEV, 4, VIEW_8N1, PTY)  # made after it: kept
    assert cache.lookup(RDEV, PTY) == VIEW_8N1
    manager.say(protocol.notice("changed", RDEV + 1, 9))  # another port's change costs this one nothing
    assert cache.lookup(RDEV, PTY) == VIEW_8N1


def test_a_removed_port_is_no_longer_watched(cache: ViewCache, manager: Manager):
    watched(cache, manager)
    cache.keep(RDEV, 3, VIEW_7E1, PTY)
    manager.say(protocol.notice("gone", RDEV))
    assert cache.lookup(RDEV, PTY) is None  # a new port may get the same device number: watched anew
    cache.keep(RDEV, 3, VIEW_7E1, PTY)  # the old port's answer, late: nothing is watched until the answer
    manager.expect_watch(RDEV)
    manager.say(protocol.ok(7))  # the manager's generations only grow, across ports too
    cache.keep(RDEV, 5, VIEW_7E1, PTY)  # made for the old port
    assert cache.lookup(RDEV, PTY) is None
    cache.keep(RDEV, 7, VIEW_8N1, PTY)
    assert cache.lookup(RDEV, PTY) == VIEW_8N1


def test_an_own_change_is_taken_from_its_answer(cache: ViewCache, manager: Manager):
    """The supervisor's own change is not told on its watch (one send fewer before the wire): no view of
    the port is answered while it is under way, and its answer's generation becomes the newest."""
    watched(cache, manager, generation=3)
    cache.keep(RDEV, 3, VIEW_8N1, PTY)
    with cache.changing(RDEV):
        assert cache.lookup(RDEV, PTY) is None  # the pty may hold the change half made
        cache.keep(RDEV, 3, VIEW_8N1, PTY)  # a concurrent "view" answered before the change
        assert cache.lookup(RDEV, PTY) is None
        cache.keep(RDEV, 5, VIEW_7E1, PTY)  # the change's answer: generation 5, never told on the watch
    assert cache.lookup(RDEV, PTY) == VIEW_7E1
    cache.keep(RDEV, 3, VIEW_8N1, PTY)  # a "view" answer from before the change, read late
    assert cache.lookup(RDEV, PTY) == VIEW_7E1
    manager.say(protocol.notice("changed", RDEV, 6))  # another program's change after ours
    assert cache.lookup(RDEV, PTY) is None


def test_an_own_change_without_its_answer_forgets_the_port(cache: ViewCache, manager: Manager):
    watched(cache, manager, generation=3)
    cache.keep(RDEV, 3, VIEW_8N1, PTY)
    with pytest.raises(TimeoutError), cache.changing(RDEV):
        raise TimeoutError  # the answer did not come: the manager may have made the change, untold
    assert cache.lookup(RDEV, PTY) is None
    manager.expect_watch(RDEV)  # asked anew
    manager.say(protocol.ok(5))
    cache.keep(RDEV, 3, VIEW_8N1, PTY)
    assert cache.lookup(RDEV, PTY) is None
    cache.keep(RDEV, 5, VIEW_7E1, PTY)
    assert cache.lookup(RDEV, PTY) == VIEW_7E1


@pytest.mark.parametrize("ending", ["close", "junk", "unasked answer", "bad notice", "long line"])
def test_a_broken_watch_connection_drops_everything(cache: ViewCache, manager: Manager, ending: str):
    watched(cache, manager)
    cache.keep(RDEV, 3, VIEW_7E1, PTY)
    assert cache.lookup(RDEV, PTY) == VIEW_7E1
    if ending == "close":
        assert manager.peer is not None
        manager.peer.close()
        manager.peer = None
    else:
        manager.say({"junk": b"hello 1\n", "unasked answer": protocol.ok(3), "bad notice": b"changed 5\n",
                     "long line": b"changed " + b"1" * 400}[ending])
    assert cache.lookup(RDEV, PTY) is None  # and this look asks for a new watch on a new connection
    manager.expect_watch(RDEV, connection="new")


def test_a_refused_watch_keeps_nothing(cache: ViewCache, manager: Manager):
    assert cache.lookup(RDEV, PTY) is None
    manager.expect_watch(RDEV, connection="new")
    manager.say(protocol.NO)
    cache.keep(RDEV, 3, VIEW_7E1, PTY)
    assert cache.lookup(RDEV, PTY) is None  # and asks again, since the last one was refused
    manager.expect_watch(RDEV)


def test_no_manager_means_no_cache(tmp_path):
    cache = ViewCache(str(tmp_path / "nobody.sock"), 4242)
    assert cache.lookup(RDEV, PTY) is None
    cache.keep(RDEV, 0, VIEW_7E1, PTY)
    assert cache.lookup(RDEV, PTY) is None
    cache.close()


def test_notices_are_read_by_the_loop_too(manager: Manager):
    """Between calls the loop reads the notices, so they never pile up in the socket."""

    async def main() -> None:
        cache = ViewCache(manager.listener.getsockname(), 4242)
        try:
            assert cache.lookup(RDEV, PTY) is None
            manager.expect_watch(RDEV, connection="new")
            manager.say(protocol.ok(0) + b"".join(protocol.notice("changed", RDEV, g) for g in range(1, 1001)))
            sock = cache._sock
            assert sock is not None

            def unread() -> int:
                return struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD, bytes(4)))[0]

            for _ in range(100):  # the loop runs between these sleeps
                if unread() == 0:
                    break
                await asyncio.sleep(0.02)
            assert unread() == 0
            cache.keep(RDEV, 1000, VIEW_7E1, PTY)  # the newest generation told of is the last one
            assert cache.lookup(RDEV, PTY) == VIEW_7E1
        finally:
            cache.close()

    asyncio.run(main())


# A wrapped program that changes the speed COUNT times: a notice to every watcher each time.
CHANGER = """
    import os, sys, termios
    fd = os.open({port!r}, os.O_RDWR | os.O_NOCTTY)
    t = termios.tcgetattr(fd)
    for i in range({count}):
        t[4] = t[5] = (termios.B9600, termios.B19200)[i % 2]
        termios.tcsetattr(fd, termios.TCSANOW, t)
    print("done")
"""


class Watcher:
    """A watch connection opened by the test itself, which holds the port open as a supervisor would."""

    def __init__(self, vcom: Vcom, port: os.PathLike[str], *, hold: bool = True) -> None:
        self.fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
        self.rdev = os.fstat(self.fd).st_rdev
        if not hold:
            os.close(self.fd)
            self.fd = -1
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(vcom.home / "interposer.sock"))
        self.sock.sendall(protocol.header("seccomp", os.getpid()))

    def ask(self, *request: object) -> bytes:
        self.sock.sendall(protocol.request(*request))
        return self.sock.recv(512)

    def close(self) -> None:
        self.sock.close()
        if self.fd >= 0:
            os.close(self.fd)


def test_only_a_process_that_holds_the_port_may_watch_it(vcom: Vcom, port):
    stranger = Watcher(vcom, port, hold=False)  # (this process then holds no descriptor of the port)
    try:
        assert stranger.ask("watch", stranger.rdev) == protocol.NO
    finally:
        stranger.close()
    holder = Watcher(vcom, port)
    try:
        assert holder.ask("watch", holder.rdev).startswith(b"ok ")
        assert holder.ask("tcsets", holder.rdev, "now", "00" * 44, "please") == protocol.err(errno.EINVAL)
    finally:
        holder.close()


def test_a_removed_port_tells_its_watchers(vcom: Vcom, port):
    watcher = Watcher(vcom, port)
    try:
        assert watcher.ask("watch", watcher.rdev).startswith(b"ok ")
        vcom.ok("remove", str(port))
        got = b""
        while not got.endswith(b"\n"):
            chunk = watcher.sock.recv(512)
            assert chunk, f"closed after {got!r}"
            got += chunk
        assert got == protocol.notice("gone", watcher.rdev)
    finally:
        watcher.close()


def test_a_watcher_that_does_not_read_is_dropped_not_buffered(vcom: Vcom, port):
    """Notices are never held back for a client that does not read them (its copy would be stale, and
    the manager's memory would grow): the manager drops the connection and goes on."""
    watcher = Watcher(vcom, port)
    try:
        assert watcher.ask("watch", watcher.rdev).startswith(b"ok ")
        changer = subprocess.run(wrap_command("preload", PYTHON, "-c",
                                              textwrap.dedent(CHANGER.format(port=str(port), count=3000))),
                                 env=vcom.env, capture_output=True, text=True, timeout=120)
        assert changer.returncode == 0 and changer.stdout.strip() == "done", changer.stderr
        # What had reached the socket is there to read, then the end: no notice waited in the manager.
        got = b""
        while chunk := watcher.sock.recv(65536):
            got += chunk
        notices = got.split(b"\n")
        assert 0 < len(notices) - 1 < 3000, len(notices)
        assert all(line.startswith(f"changed {watcher.rdev} ".encode()) for line in notices[:-1])
        assert vcom.query(port)["state"] == "connected"
    finally:
        watcher.close()
