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

So the supervisor keeps, per port, the answers it got (``view``: the view and
the pty termios it was made from) and answers a TCGETS whose pty termios it
has seen before itself.  The second part is covered by a *watch*: one
connection on which the manager, from the answer to ``watch RDEV`` on, writes
``changed RDEV`` in the same step as every change of that port's view, before
it answers the call that made it, and ``gone RDEV`` when the port is removed.

Why this is exact: a change that completed before the program's TCGETS began
has its notice in this connection's socket buffer by then, and every lookup
reads the buffer dry first.  An answer is kept only if no notice at all came
between the moment its request was sent and the moment it is kept, and only
if the watch of that port was confirmed before the request was sent.  The
manager never lets a notice wait in its own buffer (it drops the connection
instead), and a dropped connection drops everything kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections import deque

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
        self._watched: set[int] = set()
        self._views: dict[int, dict[Termios2, Termios2]] = {}
        # Counts every notice and every loss of the connection: an answer is kept only if it did not move
        # while the request was out.
        self._generation = 0

    def lookup(self, rdev: int, pty: Termios2) -> Termios2 | None:
        """The program's view of port ``rdev`` whose pty holds ``pty``, if it is known and current."""
        self._drain()
        if rdev not in self._watched:
            return None
        return self._views.get(rdev, {}).get(pty)

    def ticket(self, rdev: int) -> int | None:
        """Taken just before the manager is asked for a view: what ``keep`` needs to know that nothing
        changed meanwhile.  None while the port is not watched yet (this asks for the watch)."""
        self._drain()
        if rdev in self._watched:
            return self._generation
        if rdev not in self._asked:
            self._watch(rdev)
        return None

    def keep(self, rdev: int, ticket: int | None, view: Termios2, pty: Termios2) -> None:
        """The manager's answer to a ``view`` request sent with ``ticket``."""
        self._drain()
        if ticket is None or ticket != self._generation or rdev not in self._watched:
            return
        kept = self._views.setdefault(rdev, {})
        if pty not in kept and len(kept) >= _KEPT_PER_PORT:
            del kept[next(iter(kept))]
        kept[pty] = view

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
        except protocol.ProtocolError:
            return False
        if notice is not None:
            kind, rdev = notice
            self._generation += 1
            self._views.pop(rdev, None)
            if kind == "gone":
                self._watched.discard(rdev)
            return True
        if not self._asked:
            return False  # an answer to nothing
        rdev = self._asked.popleft()
        try:
            answer = protocol.parse_answer(line)
        except protocol.ProtocolError:
            return False
        if answer.status == "ok":
            self._watched.add(rdev)
        return True

    def _lose(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        self._generation += 1
        self._buffer = b""
        self._asked.clear()
        self._watched.clear()
        self._views.clear()
