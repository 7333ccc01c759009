"""A program's sessions on its port: the slave's opens and closes, and the linger of a closing program's bytes.

A module of its own because a session has a life of its own beside the data path: it starts at the first
open vcom sees (or infers: a program that opened, wrote and closed before the manager looked), and ends only
when everything the program wrote has been read from the pty, or CLOSING_WAIT after the last close; the
remote sees the port open and close (DTR and RTS, the group's settings source) by it.

:class:`ProgramSessions` is a part of :class:`vcom.port.Port` (a mixin, as ProgramCalls in calls.py):
opening and closing read and change most of the port's state.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    import asyncio

    from ..link import Lines, Link
    from ..pty import VirtualPty
    from ..tap import Taps
    from ..termio import Termios2
    from .group import LinkGroup
    from .port import Port

log = logging.getLogger("vcom.port.port")  # the port's logger: its lines read as before the port was split

# How long a closed program's last bytes may wait for the remote (the serial driver's default
# closing_wait); after that they are dropped and counted, as a UART's close gives up.
CLOSING_WAIT = 30.0
# Reads of a closed slave's leftovers when they are dropped (bounded: nobody can write more).
_DRAIN_READS = 64


class ProgramSessions:
    """Opens and closes of one port's slave (mixed into :class:`vcom.port.Port`)."""

    if TYPE_CHECKING:  # the port's state these use
        name: str
        pty: VirtualPty
        link: Link
        group: LinkGroup
        taps: Taps
        dropped_bytes: int
        lost_bytes: int
        program_lines: Lines | None
        _loop: asyncio.AbstractEventLoop
        _session: bool
        _closing: bool
        _closing_timer: asyncio.TimerHandle | None
        _live: bool
        _to_pty: bytearray

        def express_stop(self) -> None: ...
        def _refresh_settings(self, current: Termios2 | None = None, *, if_changed: bool = False) -> None: ...
        def _update_io(self) -> None: ...
        def _cancel_stall(self) -> None: ...
        def _set_writing(self, on: bool) -> None: ...

    # -- the program's side: sessions

    def _slave_event(self, opened: bool) -> None:
        """inotify saw opens or closes of the slave (``opened``: an open among them): find out what holds."""
        self.express_stop()
        holders = self.pty.slave_is_open()
        if not self._session and (holders or opened or self.pty.has_pending()):
            # Also a program that opened, wrote and closed before we looked: its bytes are in the pty.
            self._opened()
        elif self._closing and (holders or opened):
            self._reopened()
        if self._session and not holders and not self._closing:
            self._begin_close()

    def _opened(self) -> None:
        self._session = True
        self._live = True
        self._refresh_settings()
        log.info("%s: opened by a program", self.name)
        if self.taps:
            self.taps.emit("open")
        self.group.member_opened(cast("Port", self))  # a mixin of Port's, never alone
        self._update_io()

    def _reopened(self) -> None:
        """A program opened the port while the last one's bytes were still going out: one session goes on."""
        self._closing = False
        self._live = True
        self._cancel_closing_timer()
        self._update_io()

    def _begin_close(self) -> None:
        """The last program closed: nobody reads what arrives now; what it wrote still goes out."""
        self._closing = True
        if self._to_pty:
            self.dropped_bytes += len(self._to_pty)
            self._to_pty.clear()
        self._cancel_stall()
        self._set_writing(False)
        if self._live and not self.pty.has_pending():
            self._live = False  # nothing left in the pty
        self._maybe_finish()
        if self._closing:
            self._closing_timer = self._loop.call_later(CLOSING_WAIT, self._closing_expired)
            self._update_io()

    def _maybe_finish(self) -> None:
        if self._session and not self._live and not self.pty.slave_is_open():
            self._finish_close()

    def _finish_close(self) -> None:
        """Everything the program wrote has been read: the port is closed for the remote too."""
        self._cancel_closing_timer()
        self._session = self._closing = self._live = False
        self.program_lines = None
        log.info("%s: closed by the last program", self.name)
        if self.taps:
            self.taps.emit("close")
        self.group.member_closed(cast("Port", self))
        self._update_io()

    def _closing_expired(self) -> None:
        self._closing_timer = None
        lost = 0
        for _ in range(_DRAIN_READS):
            try:
                chunk = self.pty.read()
            except OSError:
                break
            if chunk is None or chunk.closed:
                break
            lost += len(chunk.data)
        self.lost_bytes += lost
        log.warning("%s: %d byte(s) written before the close could not be sent within %g s (%s); dropped",
                    self.name, lost, CLOSING_WAIT, self.link.stats.last_error or self.link.state.value)
        self._live = False
        self._finish_close()

    def _cancel_closing_timer(self) -> None:
        if self._closing_timer is not None:
            self._closing_timer.cancel()
            self._closing_timer = None
