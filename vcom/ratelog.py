"""Log a problem that repeats once per interval, with how often it came meanwhile.

A hostile or broken peer can make the same problem happen thousands of times a
second (a telnet command vcom does not know, a refused client, an accept that
finds no free descriptor).  One line each would fill the disk and bury every
other message, so such problems go through a :class:`RateLog`: the first one
of a kind (per port, per peer, ...) is logged at once; the others within the
interval are only counted, and said in one more line when the interval is over
("... 12,345 more in the last 60 s"), or on the next occurrence after it.  A
peer that misbehaves without pause costs about one line a minute per kind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

INTERVAL = 60.0
# Kinds remembered at most; beyond, those whose interval is over are forgotten (a flood of peers, each a kind).
_MAX_KINDS = 4096


@dataclass(slots=True)
class _Seen:
    since: float
    message: str
    count: int = 0  # occurrences since ``since`` that were not logged
    timer: asyncio.TimerHandle | None = None


class RateLog:
    def __init__(self, logger: logging.Logger, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self.interval = interval
        self._clock = clock
        self._seen: dict[Hashable, _Seen] = {}

    def log(self, level: int, kind: Hashable, message: str, *args: object,
            exc_info: BaseException | None = None) -> bool:
        """Log ``message % args`` unless ``kind`` was logged less than an interval ago; whether it was.
        ``exc_info``: a traceback for the line that is logged (the count that follows carries none)."""
        now = self._clock()
        seen = self._seen.get(kind)
        if seen is not None and now - seen.since < self.interval:
            seen.count += 1
            if seen.timer is None:
                seen.timer = _call_later(seen.since + self.interval - now, self._summary, kind, level)
            return False
        more = seen.count if seen is not None else 0
        if seen is not None and seen.timer is not None:
            seen.timer.cancel()
        text = message % args if args else message
        self._log.log(level, "%s%s", text, self._more(more), exc_info=exc_info)
        if len(self._seen) >= _MAX_KINDS:
            self._forget(now)
        self._seen[kind] = _Seen(now, text)
        return True

    def warning(self, kind: Hashable, message: str, *args: object) -> bool:
        return self.log(logging.WARNING, kind, message, *args)

    def info(self, kind: Hashable, message: str, *args: object) -> bool:
        return self.log(logging.INFO, kind, message, *args)

    def _summary(self, kind: Hashable, level: int) -> None:
        seen = self._seen.get(kind)
        if seen is None:
            return
        seen.timer = None
        if seen.count:
            self._log.log(level, "%s%s", seen.message, self._more(seen.count))
            seen.count = 0
            seen.since = self._clock()

    def _more(self, count: int) -> str:
        return f" ({count:,} more in the last {self.interval:g} s)" if count else ""

    def _forget(self, now: float) -> None:
        for kind, seen in list(self._seen.items()):
            if now - seen.since >= self.interval and seen.timer is None:
                del self._seen[kind]
        while len(self._seen) >= _MAX_KINDS:  # every kind is recent: drop the oldest
            kind = next(iter(self._seen))
            seen = self._seen.pop(kind)
            if seen.timer is not None:
                seen.timer.cancel()

    def close(self) -> None:
        for seen in self._seen.values():
            if seen.timer is not None:
                seen.timer.cancel()
        self._seen.clear()


def _call_later(delay: float, callback: Callable[..., None], *args: object) -> asyncio.TimerHandle | None:
    """A summary when the interval ends, on the running loop; without a loop it waits for the next occurrence."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return loop.call_later(max(delay, 0.0), callback, *args)
