"""A connection's share of the event loop: how much one read may take, and when a link must wait.

No connection takes more than its share of the event loop, whatever its server sends: one wake-up reads
at most what the session can decode in about ``RECEIVE_SLICE`` (cheap data up to 64 KiB at once; a flood
of telnet commands a few bytes), and a connection whose decoding keeps taking more than ``RECEIVE_SHARE``
of the time stops being read until its share has built up again.

Its own module because the budget is arithmetic over clock readings, apart from sockets and sessions: the
link charges each read here and stops reading when told to wait; the protocols read into the one buffer
defined here.
"""

from __future__ import annotations

import time

# Fairness, per connection: the most one wake-up reads (also the size of the one receive buffer all links
# share), the least, the decoding time one wake-up aims at, and the share of the time that decoding may
# take over a longer stretch (a token bucket holding at most RECEIVE_BURST).  Plain data decodes at well
# under a nanosecond a byte: a busy healthy link reads 64 KiB at a time and never comes near its share.
RECEIVE_MAX = 64 * 1024
RECEIVE_MIN = 64
RECEIVE_SLICE = 50e-6
RECEIVE_SHARE = 0.1
RECEIVE_BURST = 5e-3

# A short read that decoded in less is not charged (nor is the reckoning itself spent on it): a port's round
# trips and a slow stream, read by read.  A command flood in short reads costs more per read.
UNCHARGED = 2e-6

# The one receive buffer of every stream link (see vcom.link.protocols.StreamProtocol).
RECEIVE_BUFFER = memoryview(bytearray(RECEIVE_MAX))


class ReceiveShare:
    """One link's fairness budget: what its next read may take (a slice of ``RECEIVE_BUFFER``), and the
    seconds of the loop it may still use before it waits (and when that was reckoned)."""

    __slots__ = ("view", "credit", "at")

    def __init__(self) -> None:
        self.view = RECEIVE_BUFFER
        self.credit = RECEIVE_BURST
        self.at = time.perf_counter()

    def charge(self, size: int, decoding: float, decoded: float, read_started: float | None) -> float:
        """Charge a read to this link's share of the loop, and size the next read by what decoding cost; the
        seconds the link is to stop reading for (0: it need not).

        A read that filled the buffer (the server has more waiting: the link could take the whole loop) is
        charged its read and its decoding, any other read its decoding.  What a read delivers is not
        charged: the ports' back-pressure bounds it.  A port's round trips (short reads) and a healthy
        stream (64 KiB reads of plain data, a few hundred a second) stay far below their share; a server
        that floods commands reaches it and waits."""
        now = time.perf_counter()
        cost = decoded - decoding
        view = self.view
        full = size >= len(view)
        if cost > RECEIVE_SLICE:
            wanted = max(RECEIVE_MIN, int(size * RECEIVE_SLICE / cost))
            if wanted < len(view):
                self.view = RECEIVE_BUFFER[:wanted]
        elif full and len(view) < RECEIVE_MAX and cost < RECEIVE_SLICE / 2:
            self.view = RECEIVE_BUFFER[:len(view) * 2]
        if full and read_started is not None:
            cost = decoded - read_started
        credit = self.credit + (now - self.at) * RECEIVE_SHARE
        self.credit = (RECEIVE_BURST if credit > RECEIVE_BURST else credit) - cost
        self.at = now
        if self.credit >= 0:
            return 0.0
        # Wait until half a burst has built up again: a few long waits, not a pause per read.
        return (RECEIVE_BURST / 2 - self.credit) / RECEIVE_SHARE
