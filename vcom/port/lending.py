"""Lending a port to an express relay (:mod:`vcom.port.express`): when it goes, and what comes back.

A module of its own because lending is an exchange of its own between the port and the C relays, apart
from the port's data path: the wake-ups that make a port warm or hot, whether it may go (one program, no
pacing, no taps, nothing held back), the pty and the socket (from the link: vcom.link.lending) handed to a
relay thread or the loop's shared relay, and, when the relay returns or is stopped, what it read and did
not pass on, and what made it return, handled as the loop would have.

:class:`ExpressLending` is a part of :class:`vcom.port.Port` (a mixin, as ProgramCalls in calls.py):
whether a port may go express depends on most of its state, and every path that touches the pty or the
socket calls ``express_stop`` first.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING

from ..ratelog import RateLog
from . import express

if TYPE_CHECKING:
    import asyncio

    from ..link import Link
    from ..pty import PtyRead, VirtualPty
    from ..tap import Taps
    from .group import LinkGroup
    from .pacer import LinePacer

log = logging.getLogger("vcom.port.port")  # the port's logger: its lines read as before the port was split
_problems = RateLog(log)


class ExpressLending:
    """The port's side of going express (mixed into :class:`vcom.port.Port`)."""

    if TYPE_CHECKING:  # the port's state these use
        name: str
        pty: VirtualPty
        link: Link
        group: LinkGroup
        taps: Taps
        express_runs: int
        _loop: asyncio.AbstractEventLoop
        _session: bool
        _closing: bool
        _live: bool
        _to_pty: bytearray
        _writing: bool
        _writable_waiters: list[asyncio.Future[None]]
        _break_timer: asyncio.TimerHandle | None
        _pacer: LinePacer | None
        _relay: express.Relay | express.Shared | None
        _heat: int
        _heat_since: float
        _express_asked: bool

        def deliver(self, data: bytes, *, bounded: bool) -> None: ...
        def _handle(self, chunk: PtyRead) -> None: ...
        def _set_reading(self, on: bool) -> None: ...
        def _update_io(self) -> None: ...

    # -- express (vcom.port.express)

    def _warm(self) -> None:
        """One more wake-up that moved data.  A port that has HOT_EVENTS of them within HOT_WINDOW is hot and
        goes express in a relay thread of its own when one is free; one with WARM_EVENTS within WARM_WINDOW
        is lent to the loop's shared relay (each later wake-up tries again while it stays so)."""
        self._heat += 1
        if self._heat < express.LEND_EVENTS:
            return
        now = self._loop.time()
        age = now - self._heat_since
        if age > express.LEND_WINDOW:
            self._heat, self._heat_since = 0, now  # not that busy: count again
            return
        if self._relay is None and not self._express_asked:
            self._express_asked = True
            hot = self._heat >= express.HOT_EVENTS and age <= express.HOT_WINDOW
            self._loop.call_soon(self._express_start, hot)

    def _express_start(self, hot: bool) -> None:
        self._express_asked = False
        own_thread = hot and express.room()
        if not (own_thread or express.SHARED) or not self._express_eligible():
            return
        lent = self.link.lend_socket(self.express_stop)
        if lent is None:
            return
        self._heat, self._heat_since = 0, self._loop.time()
        sock, iac = lent
        self._set_reading(False)
        relay: express.Relay | express.Shared
        try:
            if own_thread:
                relay = express.Relay(self.pty.master_fd, sock, iac)
            else:
                # Handed back when it grows hot only while a relay thread could take it.
                relay = express.Shared(self.pty.master_fd, sock, iac, self._express_returned, hot=express.room(),
                                       sent=self.link.watch_acks)
        except (OSError, RuntimeError, ValueError) as exc:  # no eventfd (descriptors exhausted), no thread
            log.debug("%s: cannot go express: %s", self.name, exc)
            self.link.give_back(b"", 0, 0)
            self._update_io()
            return
        self._relay = relay
        self.express_runs += 1
        if isinstance(relay, express.Relay):
            relay.future.add_done_callback(lambda _: self._relay_done(relay))

    def _relay_done(self, relay: express.Relay) -> None:
        """In the relay's thread, when it has returned by itself: the loop takes the port back."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: the port was closed before it
            self._loop.call_soon_threadsafe(self._express_returned, relay)

    def _express_eligible(self) -> bool:
        return (self._relay is None and self._session and self._live and not self._closing
                and self._pacer is None and not self.taps and len(self.group.members) == 1
                and not self._to_pty and not self._writing and not self._writable_waiters
                and self._break_timer is None and self.link.writable)

    def _express_returned(self, relay: express.Relay | express.Shared) -> None:
        if relay is self._relay:
            outcome = relay.outcome()
            self._express_finish(outcome)
            if outcome.idle:
                # Quiet: held by the shared relay for nothing until it moves again.  Only here, where the
                # relay returned by itself: a relay taken back by express_stop() for someone about to touch
                # the socket or the pty (one that had just gone idle included) must stay taken back.
                self._express_start(False)

    def express_stop(self) -> None:
        """Take the pty and the socket back from the relay (if it has them) before touching either."""
        relay = self._relay
        if relay is not None:
            self._express_finish(relay.stop())

    def _express_finish(self, outcome: express.Outcome) -> None:
        """Back on the loop: what the relay read and did not pass on goes first, in each direction, then
        what made it return (a status byte, a telnet command) is handled as the loop would have."""
        own_thread, self._relay = isinstance(self._relay, express.Relay), None
        if outcome.failed:
            _problems.warning((self.name, "express"), "%s: the express relay failed (%s); back on the event loop",
                              self.name, os.strerror(outcome.error))
        if outcome.hot or (own_thread and (outcome.status_read or outcome.command)
                           and outcome.sent + outcome.received >= express.BUSY_RUN):
            # Still busy (or grown hot in the shared relay, or held back there): the next wake-up that moves
            # data may take it to a relay thread.  (A run that moved little before a command, a server
            # flooding commands, must grow hot again first.)
            self._heat, self._heat_since = express.HOT_EVENTS, self._loop.time()
        self.link.give_back(outcome.unsent, outcome.sent, outcome.received)
        if outcome.received:
            self.pty.delivered = True  # the relay wrote to the pty itself
        if outcome.undelivered:
            self.deliver(outcome.undelivered, bounded=False)
        if outcome.carried:
            self.link.received_by_relay(outcome.carried)
        if outcome.command:
            self.link.received_by_relay(outcome.extra)
        if outcome.status_read:
            self._handle(self.pty.parse(outcome.extra))
        self._update_io()
