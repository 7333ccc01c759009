"""The manager's side of the control socket (protocol and client: :mod:`vcom.control`)."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import socket
import struct
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from .control import CONTROL_GROUP, MAX_REQUEST
from .onbehalf import Caller
from .ratelog import RateLog

log = logging.getLogger(__name__)
_problems = RateLog(log)

_DENIED_READ_TIMEOUT = 5.0
# Connections one user may hold at once (status --watch, monitors and scripts together use a handful); one
# more is answered with a refusal and closed, so a user looping on connect cannot take every descriptor.
MAX_CONNECTIONS_PER_USER = 64

Handler = Callable[[dict[str, Any], Caller], Awaitable[dict[str, Any]]]


# -- server side ---------------------------------------------------------------------------------


def peer_allowed(uid: int, gid: int, pid: int | None = None) -> bool:
    """Root, the manager's user, and members of group vcom: by the caller's primary group, its supplementary
    groups (SupplementaryGroups= of a unit, newgrp: not in /etc/group's list), or that list."""
    if uid in (0, os.geteuid()):
        return True
    try:
        group = grp.getgrnam(CONTROL_GROUP)
    except KeyError:
        return False
    if gid == group.gr_gid or (pid is not None and group.gr_gid in _supplementary_groups(pid)):
        return True
    try:
        import pwd

        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return False
    return name in group.gr_mem


def _supplementary_groups(pid: int) -> set[int]:
    """The groups of process ``pid`` as the kernel has them (/proc/PID/status ``Groups:``)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Groups:"):
                    return {int(field) for field in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return set()


def _peer_credentials(writer: asyncio.StreamWriter) -> tuple[int, int, int]:
    sock = writer.get_extra_info("socket")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


class ControlServer:
    """The listening socket and the connections being served, so that shutdown can end them cleanly
    (a handler cancelled by the loop's shutdown would be reported as an error by asyncio)."""

    def __init__(self) -> None:
        self.server: asyncio.AbstractServer | None = None
        self.clients: dict[asyncio.StreamWriter, asyncio.Task[None]] = {}

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in list(self.clients):
            writer.close()  # the handler's readline() then sees EOF and returns
        tasks = [t for t in self.clients.values() if t is not asyncio.current_task()]
        if tasks:
            await asyncio.wait(tasks, timeout=5)


async def serve(path: Path, handler: Handler) -> ControlServer:
    """Listen on ``path``; each line is handed to ``handler`` and its answer written back."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    control = ControlServer()
    per_user: Counter[int] = Counter()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        control.clients[writer] = task
        uid = -1
        try:
            pid, uid, gid = _peer_credentials(writer)
            per_user[uid] += 1
            if per_user[uid] > MAX_CONNECTIONS_PER_USER:
                _problems.warning(("control-full", uid), "control socket: uid %d already has %d connections; "
                                  "refused another (pid %d)", uid, MAX_CONNECTIONS_PER_USER, pid)
                writer.write(json.dumps({"ok": False, "error": f"too many connections to the manager from this "
                                                               f"user (at most {MAX_CONNECTIONS_PER_USER})"}
                                        ).encode() + b"\n")
                return
            if not peer_allowed(uid, gid, pid):
                # Take the request first: closing before the caller has sent it would give the caller a
                # broken pipe instead of this answer.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_DENIED_READ_TIMEOUT):  # not wait_for: see vcom.link.Link._run
                        await reader.readline()
                await _reply(writer, {"ok": False, "error": f"permission denied: only root and group '{CONTROL_GROUP}' "
                                      "may control vcom"})
                return
            caller = Caller(pid, uid, gid)
            if not caller.unrestricted:  # what the manager may do on its behalf is checked with these
                caller = Caller(pid, uid, gid, tuple(sorted(_supplementary_groups(pid))))
            while line := await reader.readline():
                answer = await _dispatch(handler, line, caller)
                stream = answer.pop("stream", None)
                await _reply(writer, answer)
                if stream is not None:  # the connection now carries events until the caller leaves
                    await _pump(stream, reader, writer)
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except ValueError:  # a line longer than the limit
            with contextlib.suppress(ConnectionError):
                await _reply(writer, {"ok": False, "error": "request too long"})
        finally:
            if uid in per_user:
                per_user[uid] -= 1
                if not per_user[uid]:
                    del per_user[uid]
            control.clients.pop(writer, None)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    control.server = await asyncio.start_unix_server(client, path=str(path), limit=MAX_REQUEST)
    os.chmod(path, 0o660)
    with contextlib.suppress(KeyError, PermissionError):
        os.chown(path, -1, grp.getgrnam(CONTROL_GROUP).gr_gid)
    return control


async def _dispatch(handler: Handler, line: bytes, caller: Caller) -> dict[str, Any]:
    try:
        request = json.loads(line)
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            raise ValueError("expected a JSON object with a 'cmd'")
    except ValueError as exc:
        return {"ok": False, "error": f"bad request: {exc}"}
    try:
        return await handler(request, caller)
    except Exception as exc:  # the manager must answer, whatever went wrong
        log.exception("control request %s failed", request.get("cmd"))
        return {"ok": False, "error": f"internal error: {exc}"}


async def _pump(stream: AsyncIterator[dict[str, Any]], reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter) -> None:
    """Write the stream's items as JSON lines until it ends or the caller closes its side."""
    items = stream.__aiter__()
    gone = asyncio.ensure_future(reader.read(1))
    try:
        while True:
            following = asyncio.ensure_future(items.__anext__())
            done, _ = await asyncio.wait({following, gone}, return_when=asyncio.FIRST_COMPLETED)
            if following not in done:
                following.cancel()
                return
            try:
                item = following.result()
            except StopAsyncIteration:
                return
            writer.write(json.dumps(item).encode() + b"\n")
            await writer.drain()
    finally:
        gone.cancel()
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


async def _reply(writer: asyncio.StreamWriter, answer: dict[str, Any]) -> None:
    writer.write(json.dumps(answer).encode() + b"\n")
    await writer.drain()
