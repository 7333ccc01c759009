"""The manager's end of the interposer protocol: a Unix socket, one request per line.

Who may ask: the socket is open to every local user (programs run as
members of ``dialout``, not of ``vcom``), so each request is checked against
the caller's process (SO_PEERCRED): it must hold the port's pty slave open.
A process can drive only a port it could write to anyway; the seccomp
supervisor holds a duplicate of the program's descriptor while it asks.

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
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..ratelog import RateLog
from ..termio import TERMIOS2_SIZE, TERMIOS_SIZE, Termios2
from . import protocol
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
    def __init__(self, path: Path, find_port: Callable[[int], Port | None]) -> None:
        self.path = path
        self._find = find_port
        self._server: asyncio.AbstractServer | None = None
        self._per_user: Counter[int] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._refusals: dict[str, tuple[float, int]] = {}

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._server = await asyncio.start_unix_server(self._client, path=str(self.path),
                                                       limit=protocol.MAX_LINE)
        os.chmod(self.path, 0o666)  # access is decided per request, by who holds the port open

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        pid, uid = _peer(writer)
        self._per_user[uid] += 1
        try:
            if self._per_user[uid] > MAX_CONNECTIONS_PER_USER:
                _problems.warning(("full", uid), "interposer socket: uid %d already has %d connections; refused "
                                  "another (pid %d)", uid, MAX_CONNECTIONS_PER_USER, pid)
                return
            header = protocol.parse_header(await asyncio.wait_for(reader.readline(), _HEADER_TIMEOUT))
            while True:
                line = await asyncio.wait_for(reader.readline(), _IDLE_TIMEOUT)
                if not line:
                    return
                writer.write(await self._answer(line, pid, header))
                await writer.drain()
        except (ConnectionError, TimeoutError, ProtocolError, ValueError, asyncio.IncompleteReadError):
            pass  # a client that breaks the protocol, goes quiet or leaves is simply closed
        except asyncio.CancelledError:
            pass  # the manager is stopping
        finally:
            self._per_user[uid] -= 1
            if not self._per_user[uid]:
                del self._per_user[uid]
            self._tasks.discard(task)
            writer.close()

    async def _answer(self, line: bytes, pid: int, header: protocol.Header) -> bytes:
        request = protocol.parse_request(line)
        port = self._find(request.rdev)
        if port is None:
            return protocol.NO
        if not holds_open(pid, port.pty.slave_path):
            self._refused(port.name, pid)
            return protocol.NO
        interposed = port.view.interposed
        interposed[header.pid] = header.kind
        if len(interposed) > _REMEMBERED_PROGRAMS:
            # Short-lived programs come and go (a wrapped job started every minute): keep those still here.
            port.view.interposed = {pid: kind for pid, kind in interposed.items()
                                    if holds_open(pid, port.pty.slave_path)}
        try:
            return await self._dispatch(port, request)
        except OSError as exc:
            return protocol.err(exc.errno or errno.EIO)

    async def _dispatch(self, port: Port, request: Request) -> bytes:
        args = request.args
        match request.verb:
            case "tcgets":
                return protocol.ok(port.program_termios().pack().hex())
            case "tcsets":
                mode, raw = args[0], _unhex(args[1])
                if mode not in protocol.SET_MODES or len(raw) not in (TERMIOS_SIZE, TERMIOS2_SIZE):
                    return protocol.err(errno.EINVAL)
                current = port.pty.termios()
                asked = Termios2.unpack(raw) if len(raw) == TERMIOS2_SIZE else Termios2.unpack_termios(raw, current)
                await port.program_set_termios(asked, mode)
                return protocol.ok()
            case "modem":
                op, bits = args[0], _int(args[1])
                if op not in protocol.MODEM_OPS:
                    return protocol.err(errno.EINVAL)
                return protocol.ok(await port.program_modem(op, bits))
            case "break":
                op = args[0]
                ms = _int(args[1]) if len(args) > 1 else 0
                if op not in protocol.BREAK_OPS or not 0 <= ms <= protocol.MAX_BREAK_MS:
                    return protocol.err(errno.EINVAL)
                await port.program_break(op, ms)
                return protocol.ok()
            case "miwait":
                await port.modem_counter.wait(_int(args[0]))
                return protocol.ok()
            case "icount":
                return protocol.ok(*port.icount())
            case "drain":
                await port.program_drain()
                return protocol.ok()
            case "outq":
                return protocol.ok(port.program_outq())
            case "flush":
                if args[0] not in protocol.FLUSH_QUEUES:
                    return protocol.err(errno.EINVAL)
                await port.program_flush(receive=args[0] in ("in", "both"), transmit=args[0] in ("out", "both"))
                return protocol.ok()
        return protocol.err(errno.EINVAL)

    def _refused(self, name: str, pid: int) -> None:
        # Once per port and interval, with how many were refused meanwhile: a program retrying in a
        # loop costs a line a minute, not a line per call.
        now = time.monotonic()
        since, count = self._refusals.get(name, (0.0, 0))
        if now - since >= _REFUSAL_LOG_INTERVAL:
            more = f" ({count} more in the last {_REFUSAL_LOG_INTERVAL:g} s)" if count else ""
            log.warning("%s: interposer request from pid %d, which does not have the port open: refused%s",
                        name, pid, more)
            self._refusals[name] = (now, 0)
        else:
            self._refusals[name] = (since, count + 1)


def _peer(writer: asyncio.StreamWriter) -> tuple[int, int]:
    sock = writer.get_extra_info("socket")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _ = struct.unpack("3i", raw)
    return pid, uid


def holds_open(pid: int, slave_path: str) -> bool:
    """Whether process ``pid`` has ``slave_path`` open (any of its fds)."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        entries = os.listdir(fd_dir)
    except OSError:
        return False
    for entry in entries:
        with contextlib.suppress(OSError):
            if os.readlink(f"{fd_dir}/{entry}") == slave_path:
                return True
    return False


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
