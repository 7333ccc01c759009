"""The manager's end of the interposer protocol: a Unix socket, one request per line.

Who may ask: the socket is open to every local user (programs run as
members of ``dialout``, not of ``vcom``), so each request is checked against
the caller's process (SO_PEERCRED): it must hold the port's pty slave open.
A process can drive only a port it could write to anyway; the seccomp
supervisor holds a duplicate of the program's descriptor while it asks.  A
supervisor may also hand over its seccomp listener (``handoff``,
:mod:`.handoff`); the calls trapped there are then answered here, for the
descriptor the trapped call names, which the program holds by definition.

A hostile or broken client costs little: lines are bounded, a connection
that says nothing is closed, connections are bounded per user, and refusals
are logged once per port and interval with a count.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..ratelog import RateLog
from ..termio import TERMIOS2_SIZE, TERMIOS_SIZE, Termios2
from . import handoff, protocol
from .protocol import ProtocolError, Request

if TYPE_CHECKING:
    from ..port import Port

log = logging.getLogger(__name__)
_problems = RateLog(log)

_HEADER_TIMEOUT = 5.0
_IDLE_TIMEOUT = 300.0  # a connection with no request for this long is closed (miwait requests do not count)
MAX_CONNECTIONS_PER_USER = 256
_REFUSAL_LOG_INTERVAL = 60.0
_REMEMBERED_PROGRAMS = 64  # per port, for `vcom status`; past this the programs that left are forgotten


class InterposerServer:
    """Clients keep their connection (the preload library one per process, the seccomp supervisor a few
    per program), so a request costs a line each way and no accept.  A user at the limit of connections
    who connects again gets the place of their least recently used idle connection (its client connects
    anew on its next call); only a user whose connections are all busy or silent is refused."""

    def __init__(self, path: Path, find_port: Callable[[int], Port | None]) -> None:
        self.path = path
        self._find = find_port
        self._server: asyncio.AbstractServer | None = None
        self._per_user: dict[int, dict[_Connection, None]] = {}  # in order of last use, oldest first
        self._refusals: dict[str, tuple[float, int]] = {}
        self._watchers: dict[int, dict[_Connection, None]] = {}  # rdev -> the connections watching it

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _Connection(self), path=str(self.path))
        os.chmod(self.path, 0o666)  # access is decided per request, by who holds the port open

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [c.task for user in self._per_user.values() for c in list(user) if c.task is not None]
        for connection in [c for user in self._per_user.values() for c in user]:
            connection.close()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def admit(self, connection: _Connection) -> bool:
        mine = self._per_user.setdefault(connection.uid, {})
        if len(mine) >= MAX_CONNECTIONS_PER_USER:
            idle = next((c for c in mine if c.header is not None and c.task is None and c.handed is None), None)
            if idle is None:
                _problems.warning(("full", connection.uid), "interposer socket: uid %d already has %d connections; "
                                  "refused another (pid %d)", connection.uid, MAX_CONNECTIONS_PER_USER, connection.pid)
                return False
            del mine[idle]  # at once: the next connection in this pass must not pick the same one
            idle.close()
        mine[connection] = None
        return True

    def used(self, connection: _Connection) -> None:
        mine = self._per_user.get(connection.uid)
        if mine is not None and connection in mine:
            del mine[connection]
            mine[connection] = None  # now the most recently used

    def release(self, connection: _Connection) -> None:
        """Stop reading the listener ``connection`` handed over, before the connection ends: the supervisor
        reads it again as soon as it sees the end, and two readers must never overlap."""
        handed, connection.handed = connection.handed, None
        if handed is not None:
            asyncio.get_running_loop().remove_reader(handed.listener)
            handed.close()

    def left(self, connection: _Connection) -> None:
        self.release(connection)  # the supervisor went (killed): nobody takes back what is held
        mine = self._per_user.get(connection.uid)
        if mine is not None:
            mine.pop(connection, None)
            if not mine:
                del self._per_user[connection.uid]
        for rdev in connection.watching:
            watchers = self._watchers.get(rdev)
            if watchers is not None:
                watchers.pop(connection, None)
                if not watchers:
                    del self._watchers[rdev]

    def _watch(self, connection: _Connection, port: Port, rdev: int) -> bytes:
        """From now on ``connection`` gets a notice with every change of the port's view."""
        self._watchers.setdefault(rdev, {})[connection] = None
        connection.watching.add(rdev)
        port.view.on_change = lambda gone, maker: self._view_changed(port, rdev, gone, maker)
        return protocol.ok(port.view.generation)

    def _view_changed(self, port: Port, rdev: int, gone: bool, maker: int | None) -> None:
        """Tell the watchers of ``rdev``; not the supervisor ``maker`` (by pid), whose change this is."""
        watchers = self._watchers.pop(rdev, {}) if gone else self._watchers.get(rdev, {})
        line = protocol.notice("gone", rdev) if gone else protocol.notice("changed", rdev, port.view.generation)
        for connection in list(watchers):
            if gone:
                connection.watching.discard(rdev)
            if connection.pid != maker:
                connection.notify(line)

    def answer(self, connection: _Connection, request: Request) -> bytes | Coroutine[Any, Any, bytes]:
        """The answer, when it needs no waiting (most requests); else a coroutine that gives it."""
        if request.verb == "handoff":
            return self._take_listener(connection, request)
        port = self._find(request.rdev)
        if port is None:
            return protocol.NO
        try:
            held = connection.holds_open(port.pty.slave_path)
        except PermissionError as exc:
            self._refused(port.name, connection.pid, f"the manager may not read /proc/{connection.pid}/fd "
                          f"({exc.strerror}: that takes CAP_SYS_PTRACE for another user's process "
                          "or one with capabilities the manager lacks)")
            return protocol.NO
        if not held:
            self._refused(port.name, connection.pid, "it does not have the port open")
            return protocol.NO
        assert connection.header is not None
        note_interposed(port, connection.header.pid, connection.header.kind)
        if request.verb == "watch":
            return self._watch(connection, port, request.rdev)
        try:
            return _dispatch(port, request, connection.pid)
        except OSError as exc:
            return protocol.err(exc.errno or errno.EIO)

    def _take_listener(self, connection: _Connection, request: Request) -> bytes:
        """A supervisor's seccomp listener, answered here from now on (vcom.interposer.handoff); "no" when
        it cannot be taken (no ptrace right over the supervisor), and the supervisor answers as before."""
        if connection.handed is not None:
            return protocol.err(errno.EBUSY)
        listener_fd, held_fd, program = (_int(arg) for arg in request.args)
        try:
            listener, page = handoff.take(connection.pid, listener_fd, held_fd)
        except OSError as exc:
            _problems.info(("handoff", exc.errno), "vcom wrap (pid %d): the manager cannot take its seccomp "
                           "listener (%s); the supervisor answers the calls", connection.pid, exc.strerror)
            return protocol.NO
        loop = asyncio.get_running_loop()

        def ended(handed: handoff.Handed) -> None:
            connection.close()  # released first; the supervisor sees the end and reads the listener again

        handed = handoff.Handed(listener, page, self._find, _dispatch, note_interposed, ended)
        connection.handed = handed
        loop.add_reader(listener, handed.readable)
        log.debug("vcom wrap (pid %d, program %d): the manager answers its calls", connection.pid, program)
        return protocol.ok()

    def _refused(self, name: str, pid: int, why: str) -> None:
        # Once per port and interval, with how many were refused meanwhile: a program retrying in a
        # loop costs a line a minute, not a line per call.
        now = time.monotonic()
        since, count = self._refusals.get(name, (0.0, 0))
        if now - since >= _REFUSAL_LOG_INTERVAL:
            more = f" ({count} more in the last {_REFUSAL_LOG_INTERVAL:g} s)" if count else ""
            log.warning("%s: interposer request from pid %d refused: %s%s", name, pid, why, more)
            self._refusals[name] = (now, 0)
        else:
            self._refusals[name] = (since, count + 1)


class _Connection(asyncio.BufferedProtocol):
    """One client: a header line, then requests answered one at a time, in order.  Lines are bounded; a
    connection that sends no header within _HEADER_TIMEOUT, or no request within _IDLE_TIMEOUT, or breaks
    the protocol is closed.  A request that must wait (a drain, a change behind bytes still in the pty, a
    TIOCMIWAIT) runs as a task; reading stops until it is answered, so a client cannot queue up work."""

    def __init__(self, server: InterposerServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self.header: protocol.Header | None = None
        self.task: asyncio.Task[None] | None = None
        self.pid = self.uid = -1
        self._last_use = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._found: dict[str, str] = {}  # slave path -> the /proc fd entry where the client last had it
        self.watching: set[int] = set()  # ports this connection gets notices about
        self.handed: handoff.Handed | None = None  # the supervisor's listener, held while this connection is
        # Read into a small buffer of our own: a plain Protocol gets a new 256 KiB bytes object per read
        # (an mmap and munmap each time) for requests of a few dozen bytes.
        self._read_buffer = bytearray(protocol.MAX_LINE * 2)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        try:
            self.pid, self.uid = _peer(transport.get_extra_info("socket"))
        except OSError:
            transport.abort()
            return
        if not self._server.admit(self):
            transport.abort()
            return
        loop = asyncio.get_running_loop()
        self._last_use = loop.time()
        self._timer = loop.call_later(_HEADER_TIMEOUT, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.left(self)
        if self._timer is not None:
            self._timer.cancel()
        if self.task is not None:
            self.task.cancel()  # the program gave up (EINTR) or went away: its change is not made

    def close(self) -> None:
        self._server.release(self)
        if self._transport is not None:
            self._transport.close()

    def notify(self, line: bytes) -> None:
        """A notice on a watch connection.  One that cannot go at once (a client that does not read) would
        wait here while the client's copy went stale: the connection is dropped instead, and with it
        everything the client kept."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(line)
        if transport.get_write_buffer_size():
            transport.abort()

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self._read_buffer)

    def buffer_updated(self, nbytes: int) -> None:
        self._buffer += self._read_buffer[:nbytes]
        self._next()

    def _next(self) -> None:
        assert self._transport is not None
        while self.task is None and not self._transport.is_closing():
            line, newline, rest = self._buffer.partition(b"\n")
            if not newline:
                if len(self._buffer) > protocol.MAX_LINE:
                    self.close()
                return
            self._buffer = rest
            try:
                self._line(line)
            except (ProtocolError, ValueError):
                self.close()  # a client that breaks the protocol is simply closed
                return
        if self.task is not None:
            self._transport.pause_reading()

    def _line(self, line: bytes) -> None:
        assert self._transport is not None
        self._last_use = asyncio.get_running_loop().time()
        if self.header is None:
            self.header = protocol.parse_header(line)
            return
        request = protocol.parse_request(line)
        self._server.used(self)
        answer = self._server.answer(self, request)
        if isinstance(answer, bytes):
            self._transport.write(answer)
            return
        self.task = asyncio.get_running_loop().create_task(self._later(answer))

    async def _later(self, waiting: Coroutine[Any, Any, bytes]) -> None:
        try:
            answer = await waiting
        except OSError as exc:
            answer = protocol.err(exc.errno or errno.EIO)
        finally:
            self.task = None
        assert self._transport is not None
        if not self._transport.is_closing():
            self._last_use = asyncio.get_running_loop().time()
            self._transport.write(answer)
            self._transport.resume_reading()
            self._next()

    def _check_idle(self) -> None:
        # One timer per connection, moved on when it fires rather than at every request.
        loop = asyncio.get_running_loop()
        limit = _IDLE_TIMEOUT if self.header is not None else _HEADER_TIMEOUT
        due = self._last_use + limit
        if self.task is None and self.handed is None and loop.time() >= due:
            self._timer = None
            self.close()
            return
        self._timer = loop.call_at(max(due, loop.time() + 1.0), self._check_idle)

    def holds_open(self, slave_path: str) -> bool:
        """Whether the client has ``slave_path`` open; the descriptor found last time is looked at first."""
        fd_dir = f"/proc/{self.pid}/fd"
        entry = self._found.get(slave_path)
        if entry is not None:
            with contextlib.suppress(OSError):
                if os.readlink(f"{fd_dir}/{entry}") == slave_path:
                    return True
        entry = _find_open(self.pid, slave_path)
        if entry is None:
            self._found.pop(slave_path, None)
            return False
        self._found[slave_path] = entry
        return True


def _dispatch(port: Port, request: Request, asker: int) -> bytes | Coroutine[Any, Any, bytes]:
    """The answer; for a request that must wait (a drain, a flush, a timed break, TIOCMIWAIT, a change
    behind what the pty still holds), a coroutine that gives it.  ``asker``: the pid on the connection."""
    args = request.args
    match request.verb:
        case "tcgets":
            return protocol.ok(port.program_termios().pack().hex())
        case "view":
            return _view(port)
        case "tcsets":
            mode, raw, view = args[0], _unhex(args[1]), args[2:] == ("view",)
            if (mode not in protocol.SET_MODES or len(raw) not in (TERMIOS_SIZE, TERMIOS2_SIZE)
                    or len(args) > 2 and not view):
                return protocol.err(errno.EINVAL)
            asked = _asked(port, raw)
            # A supervisor that asks for the view back keeps none of this port until it has it: its own
            # watch is not told of the change (see vcom.interposer.viewcache).
            maker = asker if view else None
            if mode == "now" and port.change_ready():
                port.program_set_termios_now(asked, maker=maker)
                return _view(port) if view else protocol.ok()
            return _ok(port.program_set_termios(asked, mode, maker), port if view else None)
        case "modem":
            op, bits = args[0], _int(args[1])
            if op not in protocol.MODEM_OPS:
                return protocol.err(errno.EINVAL)
            if op == "get" or port.change_ready():
                return protocol.ok(port.program_modem_now(op, bits))
            return _ok(port.program_modem(op, bits))
        case "break":
            op = args[0]
            ms = _int(args[1]) if len(args) > 1 else 0
            if op not in protocol.BREAK_OPS or not 0 <= ms <= protocol.MAX_BREAK_MS:
                return protocol.err(errno.EINVAL)
            if op != "pulse" and port.change_ready():
                port.program_break_now(op)
                return protocol.ok()
            return _ok(port.program_break(op, ms))
        case "icount":
            return protocol.ok(*port.icount())
        case "outq":
            return protocol.ok(port.program_outq())
        case "flush":
            if args[0] not in protocol.FLUSH_QUEUES:
                return protocol.err(errno.EINVAL)
            return _ok(port.program_flush(receive=args[0] in ("in", "both"), transmit=args[0] in ("out", "both")))
        case "miwait":
            return _ok(port.modem_counter.wait(_int(args[0])))
        case "drain":
            return _ok(port.program_drain())
    return protocol.err(errno.EINVAL)


async def _ok(waiting: Awaitable[int | None], view_of: Port | None = None) -> bytes:
    """The "ok" answer once ``waiting`` is done, with its value if it has one (the TIOCM bits), or with
    the port's view after it (a supervisor's tcsets)."""
    value = await waiting
    if view_of is not None:
        return _view(view_of)
    return protocol.ok() if value is None else protocol.ok(value)


def _view(port: Port) -> bytes:
    """The view's generation, the program's view, and the pty termios it was made from: what a seccomp
    supervisor keeps (vcom.interposer.viewcache).  The view first: making it may find the view ended."""
    current = port.pty.termios()
    view = port.program_termios(current)
    return protocol.ok(port.view.generation, view.pack().hex(), current.pack().hex())


def _asked(port: Port, raw: bytes) -> Termios2:
    return Termios2.unpack(raw) if len(raw) == TERMIOS2_SIZE else Termios2.unpack_termios(raw, port.pty.termios())


def _peer(sock: socket.socket) -> tuple[int, int]:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _ = struct.unpack("3i", raw)
    return pid, uid


def note_interposed(port: Port, pid: int, kind: str) -> None:
    """That ``pid`` reached ``port`` through an interposer of ``kind`` (for `vcom status`)."""
    interposed = port.view.interposed
    if interposed.get(pid) == kind:
        return
    interposed[pid] = kind
    if len(interposed) > _REMEMBERED_PROGRAMS:
        # Short-lived programs come and go (a wrapped job started every minute): keep those still here.
        port.view.interposed = {pid: kind for pid, kind in interposed.items()
                                if holds_open(pid, port.pty.slave_path)}


def holds_open(pid: int, slave_path: str) -> bool:
    """Whether process ``pid`` has ``slave_path`` open (any of its fds); False also when the manager may
    not look."""
    try:
        return _find_open(pid, slave_path) is not None
    except PermissionError:
        return False


def _find_open(pid: int, slave_path: str) -> str | None:
    """The entry of ``/proc/PID/fd`` that is ``slave_path``, if any.  PermissionError: the manager may not
    read where they lead (a ptrace access check: root needs CAP_SYS_PTRACE for another user's process, or
    for one with capabilities it lacks)."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        entries = os.listdir(fd_dir)
    except PermissionError:
        raise
    except OSError:
        return None  # gone
    for entry in entries:
        try:
            if os.readlink(f"{fd_dir}/{entry}") == slave_path:
                return entry
        except PermissionError:
            raise  # every entry is refused alike
        except OSError:
            pass  # closed meanwhile
    return None


def _unhex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ProtocolError("bad hex") from None


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ProtocolError(f"{text!r} is not a number") from None
