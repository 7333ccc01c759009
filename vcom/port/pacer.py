"""Line-rate emulation (``--emulate-baud``): the program's data taken no faster than a UART would send it.

Without it the network and the server pace the data: a program's write returns as soon as the pty,
vcom and the sockets have room, and at 300 baud that can be minutes of line time that ``tcdrain``
and a write timeout never see.  With it the port takes bytes from the pty only as a UART's
transmitter would free its buffer (``FIFO`` bytes, the serial core's transmit buffer): once that
is full the pty fills and the program's write blocks, write timeouts fire and ``cancel_write``
finds a write to cancel.  ``tcdrain`` also waits for the line time of what was taken
(:meth:`idle_in`), so RS-485-style programs (RTS raised, write, drain, RTS lowered) see a local
UART's timing.  The pty itself still holds about 18 KiB before a write blocks, where a UART's
driver holds 4 KiB.

The clock is injectable: tests step it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..settings import LineSettings

FIFO = 4096  # bytes a UART driver takes ahead of its transmitter (serial core: one page)
RESUME_AT = FIFO // 2  # take more once the transmitter has this much room again, not byte by byte


class LinePacer:
    def __init__(self, settings: LineSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._rate = settings.chars_per_second
        self._busy_until = 0.0  # when the emulated transmitter has sent everything taken so far

    def set_settings(self, settings: LineSettings) -> None:
        """A new speed or framing: what is still queued goes at the new rate, as in a UART."""
        now = self._clock()
        queued = self.backlog(now)
        self._rate = settings.chars_per_second
        self._busy_until = now + queued / self._rate

    def backlog(self, now: float | None = None) -> int:
        """Bytes taken and not yet sent at the line rate."""
        now = self._clock() if now is None else now
        return max(0, int((self._busy_until - now) * self._rate + 0.5))

    def room(self) -> int:
        """How many bytes may be taken now."""
        return max(0, FIFO - self.backlog())

    def took(self, count: int) -> None:
        now = self._clock()
        self._busy_until = max(now, self._busy_until) + count / self._rate

    def clear(self) -> None:
        """The transmitter's queue discarded (TCOFLUSH)."""
        self._busy_until = 0.0

    def ready_in(self) -> float:
        """Seconds until there is room for RESUME_AT bytes again."""
        return max(0.0, (self.backlog() - (FIFO - RESUME_AT)) / self._rate)

    def idle_in(self) -> float:
        """Seconds until everything taken has been sent at the line rate."""
        return max(0.0, self._busy_until - self._clock())
