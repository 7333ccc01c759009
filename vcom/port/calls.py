"""What an interposed program's calls do to its port: the ``program_*`` requests of vcom.interposer.server.

A program under ``vcom wrap`` or the preload library does not reach the pty
for these calls: tcgetattr/tcsetattr with the data bits and parity the pty
cannot keep, the modem lines, breaks, drains, flushes and the counters of
TIOCGICOUNT.  Each one takes effect in order with the bytes the program wrote
before it, as on a UART.  A change that needs no waiting is made in the
socket's callback (the ``*_now`` methods); the others run as a task of the
interposer server.

:class:`ProgramCalls` is a part of :class:`vcom.port.Port`, kept apart so that
the port's own module stays with its data path; it uses the port's pty, view,
link, group and pacer.
"""

from __future__ import annotations

import asyncio
import termios
from typing import TYPE_CHECKING, cast

from ..link import Lines, LinkState
from ..termio import Termios2

if TYPE_CHECKING:
    from ..interposer.view import ModemCounter, ProgramView
    from ..link import Link
    from ..pty import VirtualPty
    from ..tap import Taps
    from . import express
    from .group import LinkGroup
    from .pacer import LinePacer
    from .port import Port, PortHost

_PENDING_NOW = 64 << 10  # what an interposed change hands to the link in the loop's callback, before waiting


class ProgramCalls:
    """The interposer's requests on one port (mixed into :class:`vcom.port.Port`)."""

    if TYPE_CHECKING:  # the port's state these use
        pty: VirtualPty
        view: ProgramView
        link: Link
        group: LinkGroup
        host: PortHost | None
        taps: Taps
        modem_counter: ModemCounter
        program_lines: Lines | None
        _pacer: LinePacer | None
        _loop: asyncio.AbstractEventLoop
        _live: bool
        _relay: express.Relay | express.Shared | None
        _break_timer: asyncio.TimerHandle | None

        def express_stop(self) -> None: ...
        def _pass_pending(self, left: int) -> tuple[int, str | None]: ...
        async def _send_pending(self) -> None: ...
        def _flush(self, *, receive: bool, transmit: bool) -> None: ...
        def _settings_ahead(self, asked: Termios2) -> None: ...
        def _refresh_settings(self, current: Termios2 | None = None, *, if_changed: bool = False) -> None: ...

    def program_termios(self, current: Termios2 | None = None) -> Termios2:
        """What tcgetattr returns to an interposed program (``current``: the pty's termios, if just read)."""
        return self.view.for_program(self.pty.termios() if current is None else current)

    def change_ready(self) -> bool:
        """Whether an interposed change can take effect at once: what the program wrote before it (if
        anything) has been handed to the link here and now, without waiting.  Then the manager answers it
        without a task (the ``*_now`` methods): that is where a wrapped program's DTR and speed changes
        spend their time.  The budget is small: a writer that keeps the pty full is served by the task."""
        left, wait = self._pass_pending_now()
        return wait is None and (left > 0 or not (self._live and self.pty.has_pending()))

    def _pass_pending_now(self) -> tuple[int, str | None]:
        """What the pty holds, to the link in this callback within _PENDING_NOW (see _pass_pending)."""
        self.express_stop()
        return self._pass_pending(_PENDING_NOW)

    async def program_set_termios(self, asked: Termios2, mode: str, maker: int | None = None) -> None:
        """An interposed tcsetattr (``mode``: now, drain or flush): exact data bits and parity, in order
        with the bytes written before it.  ``maker``: see program_set_termios_now."""
        if mode == "now":
            if self._pacer is None:
                await self._send_pending()
            # With --emulate-baud the bytes still queued are the UART's transmit queue: as on a UART they
            # go at the new settings, and the call does not wait for the old line rate to send them.
        else:
            await self.program_drain()  # TCSADRAIN and TCSAFLUSH: after all written has been received
        self.program_set_termios_now(asked, flush=mode == "flush", maker=maker)

    def program_set_termios_now(self, asked: Termios2, *, flush: bool = False, maker: int | None = None) -> None:
        """``maker``: the pid of the seccomp supervisor that asks, which keeps no view of the port while its
        change is under way and takes the new one from its answer; it is sent no notice of it."""
        if flush:
            self._flush(receive=True, transmit=False)  # TCSAFLUSH also discards what was not read
        # Watchers hear of the change twice.  Before the pty takes it: a supervisor that then reads the new
        # pty termios must not answer from a view kept for the same termios under the old settings (the
        # change has not completed, and may not be seen half made).  And once the change has gone to the
        # link (not before: a notice is a send), before the call is answered: the view to keep from then on.
        self.view.changed(maker)
        self._settings_ahead(asked)
        try:
            applied = self.pty.apply(asked, flush_input=flush)
        except OSError:
            self._refresh_settings()  # the change failed: the wire goes back to what the pty holds
            raise
        self.view.record(asked, applied)
        self._refresh_settings(applied)  # finds nothing new unless the pty kept other than it was asked
        self.view.changed(maker)
        if self.host is not None:
            self.host.view_changed(cast("Port", self))  # a mixin of Port's, never alone
        # Every termios change raises a status byte on the master, this one too.  Taken here, after the send
        # and before the call is answered (as a UART driver's tcsetattr finishes its work before it returns),
        # it is off the way of the next change, where change_ready() would read it (a poll, two reads, a
        # TCGETS2 and the refresh) between the program's call and the wire: 22-40 us less at p50 for a
        # wrapped program's speed change, in blocks alternated in one manager.
        self._pass_pending_now()

    async def program_modem(self, op: str, value: int) -> int:
        """TIOCMGET/SET/BIS/BIC; returns the TIOCM_* bits in force."""
        if op != "get":
            await self._send_pending()
        return self.program_modem_now(op, value)

    def program_modem_now(self, op: str, value: int) -> int:
        if op == "get":
            return self._tiocm_bits()
        if self.taps:
            self.taps.emit("lines", op=op, value=value)
        # The base is the program's own lines (what it set last, else what a UART raises at open), not the
        # link's: those lag behind while the open is not seen yet, and come from another program in a split
        # group.  Two calls in a row (pyserial's DTR, then RTS) must not undo each other.
        current = self.program_lines or Lines(dtr=True, rts=True)
        dtr, rts = bool(current.dtr), bool(current.rts)
        if op == "set":
            dtr, rts = bool(value & termios.TIOCM_DTR), bool(value & termios.TIOCM_RTS)
        elif op == "bis":
            dtr, rts = dtr or bool(value & termios.TIOCM_DTR), rts or bool(value & termios.TIOCM_RTS)
        elif op == "bic":
            dtr, rts = dtr and not value & termios.TIOCM_DTR, rts and not value & termios.TIOCM_RTS
        self.program_lines = Lines(dtr=dtr, rts=rts)
        self.group.program_lines_changed(cast("Port", self))
        return self._tiocm_bits()

    async def program_break(self, op: str, ms: int) -> None:
        """TIOCSBRK/TIOCCBRK ("on"/"off") or a timed break ("pulse"), after the bytes written before it."""
        await self._send_pending()
        if op != "pulse":
            self.program_break_now(op)
            return
        if self.taps:
            self.taps.emit("break", op=op, ms=ms)
        self._cancel_break()
        self.link.set_break(True)
        done = self._loop.create_future()
        self._break_timer = self._loop.call_later(max(ms, 1) / 1000, self._end_break, done)
        await done  # tcsendbreak returns when the break is over, as on a UART

    def program_break_now(self, op: str) -> None:
        """TIOCSBRK ("on") or TIOCCBRK ("off")."""
        if self.taps:
            self.taps.emit("break", op=op, ms=0)
        self._cancel_break()
        self.link.set_break(op == "on")

    async def program_drain(self) -> None:
        """tcdrain: until everything the program wrote before it has been received by the server (and,
        with --emulate-baud, sent at the line rate)."""
        await self._send_pending()
        await self.link.drained()
        if self._pacer is not None:
            await asyncio.sleep(self._pacer.idle_in())

    def program_outq(self) -> int:
        """TIOCOUTQ: bytes the program wrote that the server has not received yet.  Of what is still in
        the pty the kernel reports the line discipline's part only (up to 4 KiB; FIONREAD), so the count
        is exact once vcom has read the pty, and a lower bound while the connection cannot take data."""
        self.express_stop()
        try:
            pending = self.pty.pending_bytes()
        except OSError:
            pending = 0
        in_flight = self.link.in_flight()
        if self._pacer is not None:
            in_flight = max(in_flight, self._pacer.backlog())  # taken, but the line has not sent it yet
        return pending + in_flight

    async def program_flush(self, *, receive: bool, transmit: bool) -> None:
        """tcflush through the interposer: done here, before the call returns, so that the program's next
        read cannot see what vcom wrote before it.  The purge goes on the wire in order with the data: what
        the program wrote before a receive flush leaves before the PURGE-DATA (a transmit flush discards it
        instead)."""
        self.express_stop()
        if transmit:
            termios.tcflush(self.pty.master_fd, termios.TCIFLUSH)  # what it wrote that vcom has not read
        elif self.link.state is LinkState.CONNECTED:
            # What was written before goes first, waiting out back-pressure as a write would: the purge
            # must not overtake it.  With no connection there is no remote buffer to purge, so the flush
            # does not wait for one (and the purge is not sent).
            await self._send_pending()
        if receive:
            self.pty.discard_output()  # what vcom wrote that the program has not read
        self._flush(receive=receive, transmit=transmit)

    def icount(self) -> tuple[int, ...]:
        """struct serial_icounter_struct: cts dsr rng dcd rx tx frame overrun parity brk buf_overrun."""
        counts, errors, stats = self.modem_counter.counts, self.link.remote.line_errors, self.link.stats
        sent, received = self._relay.counts() if self._relay is not None else (0, 0)
        return (counts["cts"], counts["dsr"], counts["ri"], counts["dcd"], stats.bytes_from_remote + received,
                stats.bytes_to_remote + sent, errors["framing"], errors["overrun"], errors["parity"], errors["break"],
                0)

    def _end_break(self, done: asyncio.Future[None] | None = None) -> None:
        self._break_timer = None
        self.link.set_break(False)
        if done is not None and not done.done():
            done.set_result(None)

    def _cancel_break(self) -> None:
        if self._break_timer is not None:
            self._break_timer.cancel()
            self._break_timer = None

    def _tiocm_bits(self) -> int:
        lines, modem = self.link.lines, self.link.remote.modem
        bits = 0
        for on, bit in ((lines.dtr, termios.TIOCM_DTR), (lines.rts, termios.TIOCM_RTS),
                        (modem.cts, termios.TIOCM_CTS), (modem.dsr, termios.TIOCM_DSR),
                        (modem.dcd, termios.TIOCM_CAR), (modem.ri, termios.TIOCM_RNG)):
            if on:
                bits |= bit
        return bits
