"""The pace of a serial line: characters per second from the settings, and a
queue released no faster than that rate (:class:`Pacer`).

Time comes from two injectable callables, ``clock`` and ``call_later``, which
default to the running loop's; tests inject a simulated clock and step time
deterministically.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from ..device import DeviceError

TICK = 0.01  # seconds between deliveries of a busy line
MAX_BURST = 0.05  # a late timer delivers at most this much line time at once


# -- Time ---------------------------------------------------------------------


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


Clock = Callable[[], float]
CallLater = Callable[[float, Callable[[], None]], TimerHandle]


class Timebase:
    """The clock and timers a device runs on: injected ones, or the running loop's."""

    def __init__(self, clock: Clock | None, call_later: CallLater | None) -> None:
        self._injected = (clock, call_later)
        self.clock: Clock = clock or time.monotonic
        self.call_later: CallLater = call_later or _unbound_call_later

    def bind(self, name: str) -> None:
        clock, call_later = self._injected
        if clock is not None and call_later is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise DeviceError(f"{name} runs on an asyncio loop: open it from a coroutine") from None
        self.clock = clock or loop.time
        self.call_later = call_later or loop.call_later


def _unbound_call_later(delay: float, callback: Callable[[], None]) -> TimerHandle:
    raise DeviceError("simulated device used before it was opened")


# -- One direction of the line ------------------------------------------------

Marker = Callable[[], None]


class Pacer:
    """A queue released no faster than the line rate, in small batches from a timer.

    A *run* starts when the queue becomes non-empty (or is released from a
    hold, or the rate changes); within a run, at time ``t`` at most
    ``floor((t - start) * rate)`` characters have been delivered.  Idle time is
    never banked: a new run starts from zero.  Markers are actions queued in
    order with the data (a break detected after the bytes before it); they
    take no line time.
    """

    def __init__(self, timebase: Timebase, rate: float, deliver: Callable[[bytes], None]) -> None:
        self._time = timebase
        self._rate = rate
        self._deliver = deliver
        self._items: deque[bytearray | Marker] = deque()
        self._pending = 0
        self._held = False
        self._start = 0.0
        self._sent = 0
        self._timer: TimerHandle | None = None
        self._ticking = False

    @property
    def pending(self) -> int:
        """Bytes queued and not yet delivered."""
        return self._pending

    def push(self, data: bytes) -> None:
        if not data:
            return
        tail = self._items[-1] if self._items else None
        if isinstance(tail, bytearray):
            tail.extend(data)
        else:
            self._items.append(bytearray(data))
        self._pending += len(data)
        self._kick()

    def push_marker(self, action: Marker) -> None:
        self._items.append(action)
        self._kick()

    def clear(self) -> None:
        self._items.clear()
        self._pending = 0
        self._cancel()

    def hold(self, held: bool) -> None:
        if held == self._held:
            return
        self._held = held
        if held:
            self._cancel()
        else:
            self._kick()

    def set_rate(self, rate: float) -> None:
        if rate == self._rate:
            return
        self._rate = rate
        # Characters already counted at the old rate must not be re-timed at the new
        # one (a faster rate would otherwise deliver a burst): start a new run.
        self._start = self._time.clock()
        self._sent = 0
        self._cancel()
        self._kick()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _kick(self) -> None:
        if self._timer is None and not self._ticking and not self._held and self._items:
            self._start = self._time.clock()
            self._sent = 0
            self._schedule()

    def _schedule(self) -> None:
        # Wake when the next character is due, but not more often than TICK: at
        # high rates one wake-up delivers a batch, at 1 baud it delivers one.
        until_due = self._start + (self._sent + 1) / self._rate - self._time.clock()
        self._timer = self._time.call_later(max(TICK, until_due), self._tick)

    def _due(self, now: float) -> int:
        return int((now - self._start) * self._rate) - self._sent

    def _tick(self) -> None:
        self._timer = None
        now = self._time.clock()
        burst = max(1, int(self._rate * MAX_BURST))
        if self._due(now) > burst:
            # The timer ran late.  A UART cannot send faster to catch up: move the
            # run's start forward so that only one burst is due now.
            self._start = now - (self._sent + burst) / self._rate
        self._ticking = True
        try:
            self._release(now)
        finally:
            self._ticking = False
        if self._items and not self._held and self._timer is None:
            self._schedule()

    def _release(self, now: float) -> None:
        # ``_due`` is re-read on every step because a callback may hold, clear or
        # re-rate this line while we deliver.
        while self._items and not self._held:
            head = self._items[0]
            if not isinstance(head, bytearray):
                self._items.popleft()
                head()
                continue
            due = self._due(now)
            if due <= 0:
                return
            chunk = bytes(head[:due])
            del head[:due]
            if not head:
                self._items.popleft()
            self._pending -= len(chunk)
            self._sent += len(chunk)
            self._deliver(chunk)


# -- The common UART ----------------------------------------------------------
