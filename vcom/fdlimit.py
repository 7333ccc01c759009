"""The manager's file descriptors: its limit, and how close the ports have brought it.

A port holds two descriptors while it exists (its pty master, and its socket while
connected); a share one for its device and listener and one per client.  systemd starts
services with a soft RLIMIT_NOFILE of 1024 (so that programs using select(2) keep working)
and a far higher hard limit; the manager uses epoll only, so it raises its soft limit to the
hard one at start, as systemd.exec(5) recommends for such programs.

Counting open descriptors exactly (listing /proc/self/fd) costs milliseconds with thousands
open: too much for every port added.  The kernel always hands out the lowest free number, so
that number is a lower bound of how many are open, for the cost of one open(2).  A port is refused
when it would leave fewer than ``RESERVE`` descriptors, so that the control socket can still
accept a ``vcom remove``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
from dataclasses import dataclass
from typing import Any

from .ratelog import RateLog

log = logging.getLogger(__name__)
_problems = RateLog(log)

NEAR = 0.9  # warn from this share of what ports may use (the limit less RESERVE) on
RESERVE = 64  # kept for control clients, the metrics server, the C compiler's pipes, reconnects
PER_PORT = 2  # pty master and socket


@dataclass(frozen=True, slots=True)
class FdUsage:
    open: int
    limit: int

    @property
    def near(self) -> bool:
        return self.open >= _near_threshold(self.limit)

    def describe(self) -> str:
        return f"{self.open} of {self.limit} file descriptors in use"


def _near_threshold(limit: int) -> float:
    return NEAR * (limit - RESERVE)


def raise_soft_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard one; (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft, soft
    return soft, hard


def limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def lowest_free() -> int:
    """The number the next descriptor gets: at least that many are open."""
    fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    os.close(fd)
    return fd


def room_for_port(ports: int) -> bool:
    """Whether one more port fits next to ``ports`` others, each counted as connected: a port
    that has not connected yet will want its socket later."""
    in_use = max(lowest_free(), PER_PORT * ports)
    return in_use + PER_PORT <= limit() - RESERVE


def usage() -> FdUsage:
    """Exact count; milliseconds with thousands open, so not for every request."""
    return FdUsage(len(os.listdir("/proc/self/fd")) - 1, limit())


def maybe_near() -> FdUsage | None:
    """The exact usage when it may be near the limit (cheap when it is not), else None."""
    if lowest_free() < _near_threshold(limit()):
        return None
    found = usage()
    return found if found.near else None


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Out of descriptors, asyncio stops accepting on the listening socket for a second and tries again;
    it also reports each time through the loop's exception handler, a traceback per listener per second
    while a flood lasts.  Say it once a minute per socket instead, with a count, in vcom's words."""
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if context.get("message") == "socket.accept() out of system resource" and isinstance(exc, OSError):
            where = _socket_name(context.get("socket"))
            # Nothing here may need a descriptor (listing /proc/self/fd would fail as the accept did).
            _problems.warning(("accept", where), "%s: not accepting connections for a second: %s (file "
                              "descriptor limit %d)", where, (exc.strerror or str(exc)).lower(), limit())
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def _socket_name(sock: Any) -> str:
    try:
        name = sock.getsockname()
    except (AttributeError, OSError):
        return "a listening socket"
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return str(name) or "a listening socket"
