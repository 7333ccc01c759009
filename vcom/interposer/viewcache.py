"""The seccomp supervisor's copy of the program views it was given, kept exact by the manager's notices.

glibc's tcsetattr makes three ioctls on Linux (TCGETS, TCSETS, TCGETS), and
pyserial's open a dozen; under ``vcom wrap`` each one went to the manager and
back through two processes.  A program's view (what TCGETS returns: the pty's
termios with the data bits, parity and EXTPROC the program asked for, and the
tag hidden) is a function of two things:

* the pty's termios, which the supervisor reads itself from its duplicate of
  the program's descriptor, and
* what a program last set through an interposer on that port, which only the
  manager knows, and which changes only when the manager records a change or
  finds that a program that is not interposed changed the pty since.

So the supervisor keeps, per port, the answers it got (the view, the pty
termios it was made from, and the view's *generation*, which the manager
counts up with every change of it) and answers a TCGETS whose pty termios it
has seen itself.  The second part is covered by a *watch*: one connection on
which the manager, from the answer to ``watch RDEV`` (the generation then) on,
writes ``changed RDEV GEN`` in the same step as every change of that port's
view, before it answers the call that made it, and ``gone RDEV`` when the port
is removed.  A ``tcsets`` answers with the view after the change, so the
TCGETS glibc makes right after it is answered here too.

Why this is exact: a change that completed before the program's TCGETS began
has its notice in this connection's socket buffer by then, and every lookup
reads the buffer dry first; a kept view is used only while its generation is
the newest the watch has told of.  The manager never lets a notice wait in its
own buffer (it drops the connection instead), and a dropped connection drops
everything kept.

The supervisor's own changes (``tcsets ... view``) are not told on the watch:
a notice is a send, and the one before the change would stand between the
program's call and the wire.  The supervisor keeps no view of that port while
its change is under way (:meth:`ViewCache.changing`), and the answer tells it
the generation after the change, which it takes as the newest (generations
only grow, so the newest is the highest told by either).  A change whose
answer does not come makes it forget the port: it asks for a new watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections import deque
from collections.abc import Iterator

from ..termio import Termios2
from . import protocol

_KEPT_PER_PORT = 8  # pty termios a port was seen with (a program switching between a few settings)
_READ_SIZE = 4096


class ViewCache:
    """Views of the ports a supervised program uses, answered without the manager when known."""

    def __init__(self, path: str, program: int) -> None:
        self._path = path
        self._program = program  # the pid the header names
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._asked: deque[int] = deque()  # ports whose watch awaits its answer, in order
        self._newest: dict[int, int] = {}  # watched port -> the newest generation of its view told of
        self._views: dict[int, dict[Termios2, tuple[Termios2, int]]] = {}  # port -> pty -> (view, generation)
        self._changing: dict[int, int] = {}  # port -> changes of ours under way (not told on the watch)

    def lookup(self, rdev: int, pty: Termios2) -> Termios2 | None:
        """The program's view of port ``rdev`` whose pty holds ``pty``, if it is known and current; if not,
        the port's watch is asked for (the manager answers the call meanwhile)."""
        self._drain()
        newest = self._newest.get(rdev)
        if newest is None:
            if rdev not in self._asked:
                self._watch(rdev)
            return None
        if rdev in self._changing:
            return None  # a change of ours is under way: the pty may hold it half made
        view, generation = self._views.get(rdev, {}).get(pty, (None, -1))
        return view if generation == newest else None

    def keep(self, rdev: int, generation: int, view: Termios2, pty: Termios2) -> None:
        """The manager's view of port ``rdev`` made from ``pty`` at ``generation`` (an answer to "view" or
        to our own change, which the watch is not told of: a higher generation than it told is the newest)."""
        self._drain()
        newest = self._newest.get(rdev)
        if newest is None or generation < newest:
            return  # not watched, or changed since (or the watch's answer is still to come)
        if generation > newest:
            self._newest[rdev] = generation
            self._views.pop(rdev, None)  # all made before it
        kept = self._views.setdefault(rdev, {})
        if pty not in kept and len(kept) >= _KEPT_PER_PORT:
            del kept[next(iter(kept))]
        kept[pty] = (view, generation)

    @contextlib.contextmanager
    def changing(self, rdev: int) -> Iterator[None]:
        """Around a change of ours on port ``rdev`` (whose notice we are not sent): no view of the port is
        answered meanwhile, and if it does not end with its answer kept, the port is forgotten."""
        self._changing[rdev] = self._changing.get(rdev, 0) + 1
        try:
            yield
        except BaseException:
            self.forget(rdev)  # the manager may have made it: what we know of the port may be stale
            raise
        finally:
            left = self._changing.pop(rdev) - 1
            if left:
                self._changing[rdev] = left

    def forget(self, rdev: int) -> None:
        """Drop what is known of port ``rdev``; the next lookup asks for a new watch."""
        self._newest.pop(rdev, None)
        self._views.pop(rdev, None)

    def close(self) -> None:
        self._lose()

    # -- the watch connection

    def _watch(self, rdev: int) -> None:
        """Ask for notices about ``rdev``; the answer is read with the notices.  Made while the caller holds
        the program's descriptor: the manager checks that the asker has the port open."""
        if self._sock is None and not self._connect():
            return
        assert self._sock is not None
        line = protocol.request("watch", rdev)
        try:
            sent = self._sock.send(line)
        except OSError:
            sent = 0
        if sent != len(line):
            self._lose()  # a few bytes on a fresh socket: a short send means it is broken
            return
        self._asked.append(rdev)

    def _connect(self) -> bool:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(self._path)  # a Unix socket connects at once, or not now (its backlog is full)
            header = protocol.header("seccomp", self._program)
            if sock.send(header) != len(header):
                raise OSError(errno.EAGAIN, "short send")
        except OSError:
            sock.close()
            return False
        self._sock = sock
        with contextlib.suppress(RuntimeError):  # no loop running (tests drive this directly)
            asyncio.get_running_loop().add_reader(sock.fileno(), self._drain)
        return True

    def _drain(self) -> None:
        """Read every line the manager has sent so far."""
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                data = sock.recv(_READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            if not data:
                self._lose()  # the manager closed it (restarted, idle, or a notice it could not send)
                return
            self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > protocol.MAX_LINE:
            self._lose()
            return
        for line in lines:
            if not self._line(line):
                self._lose()
                return

    def _line(self, line: bytes) -> bool:
        """One line from the manager; False if it is not one the protocol allows here."""
        try:
            notice = protocol.parse_notice(line)
            answer = protocol.parse_answer(line) if notice is None else None
        except protocol.ProtocolError:
            return False
        if notice is not None:
            if notice.kind == "gone":
                self._newest.pop(notice.rdev, None)
                self._views.pop(notice.rdev, None)
            elif notice.rdev in self._newest:
                self._newest[notice.rdev] = notice.generation
                self._views.pop(notice.rdev, None)  # all made before it
            return True
        if not self._asked:
            return False  # an answer to nothing
        rdev = self._asked.popleft()
        assert answer is not None
        if answer.status == "ok":
            if len(answer.values) != 1 or not answer.values[0].isdigit():
                return False
            self._newest[rdev] = int(answer.values[0])
        return True

    def _lose(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        self._buffer = b""
        self._asked.clear()
        self._newest.clear()
        self._views.clear()
