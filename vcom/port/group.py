"""One link and the ports that share it: the link's listener.

Modem lines from what the pty shows (a pty has no TIOCM* ioctls): DTR and RTS
go up when a program opens the port, as a UART driver raises them; they drop
at the close (after the program's last byte) when HUPCL is set; speed B0
drops DTR (the termios way to hang up) and a real speed raises it again.  An
interposed program drives them itself.  When the remote drops DCD while a
program with CLOCAL off has the port open, the program is hung up as by a
real modem.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..config import PortConfig
from ..link import Backoff, Lines, Link
from ..settings import LineSettings, Signals

if TYPE_CHECKING:
    from .port import Port

# What a split member may hold for its program beyond what its pty took, before it drops the oldest.
SPLIT_BUFFER = 64 * 1024
# How often the on-open linger looks again while the program's last bytes are still on their way.
_LINGER_RECHECK = 0.5
# Bits per byte on the line (start, 8 data, stop): a closed port takes at most baud / 10 bytes a second.
_BITS_PER_BYTE = 10


class LinkGroup:
    """One link and the ports that share it; the link's listener."""

    def __init__(self, config: PortConfig) -> None:
        self.config = config  # the first port's: target, connect policy, linger, back-off
        self.link = Link(config.parsed_target, self, name=config.device, backoff=Backoff(maximum=config.retry_max),
                         peer_timeout=config.peer_timeout)
        self.members: list[Port] = []
        self._opened_order: list[Port] = []
        self._modem = Signals()
        self._linger: asyncio.TimerHandle | None = None
        self._pace: asyncio.TimerHandle | None = None  # while nobody has a port open: reading waits for it
        self._paced_upto = 0  # link.stats.bytes_from_remote already paid for while nobody had a port open
        self._loop = asyncio.get_running_loop()

    @property
    def primary(self) -> Port:
        return self.members[0]

    def join(self, port: Port) -> None:
        self.members.append(port)

    async def leave(self, port: Port) -> None:
        self.members.remove(port)
        if port in self._opened_order:
            self._opened_order.remove(port)
        if not self.members:
            self._cancel_linger()
            self._cancel_pace()
            await self.link.stop()
        else:
            self._member_changed()

    def settings_source(self) -> Port | None:
        if self.primary.is_open:
            return self.primary
        return self._opened_order[0] if self._opened_order else None

    # -- from the members

    def member_opened(self, port: Port) -> None:
        if port not in self._opened_order:
            self._opened_order.append(port)
        self._cancel_linger()
        self._member_changed()
        if self.config.connect == "on-open":
            self.link.start()

    def member_closed(self, port: Port) -> None:
        if port in self._opened_order:
            self._opened_order.remove(port)
        if not self._opened_order and port.hupcl:
            self._set_lines(Lines(dtr=False, rts=False))
        if self.config.connect == "on-open" and not self._opened_order:
            self._arm_linger(self.config.linger)
        self._member_changed()

    def member_settings(self, port: Port) -> None:
        if port is self._fallback_source():
            self.link.apply_settings(port.effective_settings)
            self._update_lines()

    def _update_lines(self) -> None:
        if not self._opened_order:
            return  # lines stay as the last close left them
        source = self._fallback_source()
        wanted = source.program_lines or Lines(dtr=True, rts=True)  # a UART driver raises both on open
        self._set_lines(Lines(dtr=bool(wanted.dtr) and not source.hangup, rts=wanted.rts))

    def _set_lines(self, lines: Lines) -> None:
        if lines != self.link.lines:
            self._emit("signals", dtr=lines.dtr, rts=lines.rts)
        self.link.set_lines(lines)

    def _emit(self, kind: str, **fields: object) -> None:
        for member in self.members:
            if member.taps:
                member.taps.emit(kind, **fields)

    def program_lines_changed(self, port: Port) -> None:
        if port is self._fallback_source():
            self._update_lines()

    def member_drained(self) -> None:
        self._update_pause()

    def _fallback_source(self) -> Port:
        return self.settings_source() or self.primary

    def _member_changed(self) -> None:
        self.link.apply_settings(self._fallback_source().effective_settings)
        self._update_lines()
        self._update_pause()

    def _update_pause(self) -> None:
        # Held back while no open member can take data, or while one whose program reads has fallen
        # SPLIT_BUFFER behind (a stalled one is not waited for).  With no open member at all, what arrives
        # is dropped at the line rate (_pace_closed).
        if not self.members:
            return
        accepting = [m for m in self.members if m.is_open]
        if not accepting:
            self._pace_closed()
            return
        self._cancel_pace()
        self._paced_upto = self.link.stats.bytes_from_remote
        if all(m.blocked for m in accepting) or any(m.holding_back for m in accepting):
            self.link.pause_reading()
        else:
            self.link.resume_reading()

    def _pace_closed(self) -> None:
        """Nobody has a port of the group open, so what arrives is dropped (Port.deliver), as a UART drops
        it.  A UART cannot receive faster than its line rate, and neither does a closed port: after each
        read the link stops reading for as long as the line would have taken to bring those bytes, so a
        fast server costs a closed port no more than a real line would."""
        if self._pace is not None:
            self.link.pause_reading()
            return
        arrived = self.link.stats.bytes_from_remote - self._paced_upto
        self._paced_upto = self.link.stats.bytes_from_remote
        if arrived <= 0:
            self.link.resume_reading()
            return
        rate = max(self._fallback_source().effective_settings.baud, 1) / _BITS_PER_BYTE
        self.link.pause_reading()
        self._pace = self._loop.call_later(arrived / rate, self._paced)

    def _paced(self) -> None:
        self._pace = None
        self._update_pause()

    def _cancel_pace(self) -> None:
        if self._pace is not None:
            self._pace.cancel()
            self._pace = None

    def _arm_linger(self, delay: float) -> None:
        self._cancel_linger()
        self._linger = self._loop.call_later(delay, self._linger_over)

    def _linger_over(self) -> None:
        self._linger = None
        if self._opened_order:
            return
        if self.link.unsent or any(m.holding for m in self.members):
            # The last program's bytes are still on their way: a close must not cut them off.
            self._arm_linger(_LINGER_RECHECK)
            return
        self.link.stop_nowait()

    def _cancel_linger(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None

    # -- LinkListener

    def link_data(self, data: bytes) -> None:
        members = self.members
        for member in members:
            member.deliver(data, bounded=len(members) > 1)
        # Nearly every read: the one port is open and took it all, which cannot change whether the link
        # reads (it was reading).  Anything else may.
        if len(members) != 1 or not members[0].is_open or members[0].blocked:
            self._update_pause()

    def link_writable(self, writable: bool) -> None:
        for member in self.members:
            member.link_writable(writable)

    def link_changed(self) -> None:
        self._emit("link", state=self.link.state.value, error=self.link.stats.last_error)

    def link_settings(self) -> LineSettings:
        """The settings in force right now (the link asks before it sends them on connect)."""
        source = self._fallback_source()
        source.read_settings()
        return source.effective_settings

    def link_modem(self, signals: Signals, state: int) -> None:
        self._emit("signals", cts=signals.cts, dsr=signals.dsr, dcd=signals.dcd, ri=signals.ri)
        previous, self._modem = self._modem, signals
        for member in self.members:
            member.modem_counter.update(previous, signals, state)
        if not (previous.dcd is True and signals.dcd is False):
            return
        for member in list(self.members):
            if member.is_open and not member.clocal and member.config.hangup_on_dcd:
                member.hang_up("the remote dropped DCD")
