"""Taps on a port's traffic for ``vcom monitor``.

A port calls :meth:`Taps.emit` at each thing worth seeing (data each way,
settings, lines, purges, breaks, opens, closes), in the order they happen on
the loop.  With nobody watching that is one truth test per event.  Each
watcher gets a bounded queue: a watcher that cannot keep up loses events
(counted, and told so), it never slows the port down.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

QUEUE_EVENTS = 10_000


class Watcher:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_EVENTS)
        self.lost = 0

    def put(self, event: dict[str, Any]) -> None:
        if self.lost and not self.queue.full():
            lost, self.lost = self.lost, 0
            self.queue.put_nowait({"t": event["t"], "kind": "lost", "events": lost})
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.lost += 1


class Taps:
    def __init__(self) -> None:
        self._watchers: list[Watcher] = []

    def __bool__(self) -> bool:
        return bool(self._watchers)

    def emit(self, kind: str, **fields: Any) -> None:
        event = {"t": time.time(), "kind": kind, **fields}
        for watcher in self._watchers:
            watcher.put(event)

    def add(self) -> Watcher:
        watcher = Watcher()
        self._watchers.append(watcher)
        return watcher

    def remove(self, watcher: Watcher) -> None:
        if watcher in self._watchers:
            self._watchers.remove(watcher)
