"""One virtual port: a pty, the program's sessions on it, and its share of a link.

Here: the port's life cycle and its data path both ways (what the program wrote, settings, flushes and
hang-ups, the network's data for the program, event-loop registration).  Parts of :class:`Port` live in
modules of their own: the program's sessions (sessions.py), its interposed calls (calls.py), lending it to
an express relay (lending.py) and its status (status.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import termios
from collections.abc import Callable
from typing import Any, Protocol

from .. import termio
from ..config import PortConfig
from ..interposer.view import ModemCounter, ProgramView
from ..link import Lines
from ..pty import READ_SIZE, Ownership, PtyRead, VirtualPty
from ..settings import LineSettings
from ..tap import Taps
from ..termio import Termios2
from . import express
from .calls import ProgramCalls
from .group import SPLIT_BUFFER, LinkGroup
from .lending import ExpressLending
from .pacer import LinePacer
from .sessions import ProgramSessions
from .status import port_status

log = logging.getLogger(__name__)

# What one wake-up reads from a pty at most: two full reads, sent as one.  A read after a full one waits in
# the kernel until the line discipline is refilled from what the program wrote; more such waits in a row
# stall the loop for every port and slowed echo throughput (measured: 73 MB/s with two reads, 66 with one,
# 48 with sixteen).
_READ_BUDGET = 2 * (READ_SIZE - 1)
# How long a split member's program may take nothing while its group waits for it; then it is stalled, and
# loses its oldest data beyond SPLIT_BUFFER instead of holding the others back.
STALL_TIME = 1.0
# Network data a port keeps for its program beyond what the pty took, before the link stops reading.  A pty
# takes about 14 KiB per wake-up of a fast reader and a read brings up to 16 KiB: with no allowance every
# chunk would pause and resume the link (two epoll_ctl calls), with this much a program that keeps up
# never does.
PTY_BACKLOG = 32 * 1024
# The most an interposed change waits to send before it takes effect: far more than a pty holds (the
# kernel queues about 18 KiB), so it only bounds a writer that keeps writing while the change waits.
_PENDING_LIMIT = 1 << 20

# watch(path, callback(opened)) -> unwatch; ``opened``: an IN_OPEN was among the events.
WatchFn = Callable[[str, Callable[[bool], None]], Callable[[], None]]


class PortHost(Protocol):
    """What a port tells the manager beyond its group: its pty master, to be kept alive if the manager
    dies (the keeper, or systemd's store), and the program's termios, to survive that too."""

    def keep(self, port: Port) -> None: ...

    def forget(self, port: Port) -> None: ...

    def view_changed(self, port: Port) -> None: ...


class Port(ProgramSessions, ExpressLending, ProgramCalls):
    def __init__(self, config: PortConfig, group: LinkGroup, watch: WatchFn, host: PortHost | None = None) -> None:
        self.config = config
        self.host = host
        self.name = config.device
        self.group = group
        self.link = group.link
        self.pty = VirtualPty(
            config.device,
            ownership=Ownership(owner=config.owner, group=config.group, mode=config.mode),
            baud=config.baud,
        )
        self.settings = LineSettings(baud=config.baud)
        self.dropped_bytes = 0  # arrived while no program had the port open, or a split member fell behind
        self.lost_bytes = 0  # written by a program that closed, and not sent within CLOSING_WAIT
        self.hangup = False  # the program set speed B0
        self.hupcl = True  # the program's termios: drop DTR/RTS at the last close
        self.clocal = True  # the program's termios: ignore DCD
        self.hangups = 0  # times the program was hung up because DCD dropped
        self.program_lines: Lines | None = None  # DTR/RTS the program set through the interposer
        self.view = ProgramView(self.name)  # the termios an interposed program set
        self.modem_counter = ModemCounter()  # TIOCGICOUNT / TIOCMIWAIT
        self.taps = Taps()  # vcom monitor
        self._break_timer: asyncio.TimerHandle | None = None
        self._pins = config.pins()
        self._watch = watch
        self._unwatch: Callable[[], None] | None = None
        self._session = False  # a program's session: from its open until all it wrote has been read
        self._closing = False  # the program closed; its last bytes are still being read
        self._closing_timer: asyncio.TimerHandle | None = None
        self._live = False  # reading the master may still give data (the session has not hit EIO)
        self._reading = False
        self._writable_waiters: list[asyncio.Future[None]] = []  # interposed calls waiting to send what came before
        self._to_pty = bytearray()  # network data the pty could not take yet
        self._writing = False
        # Split groups: a member whose program took nothing for STALL_TIME while it held the others back
        # is stalled; only then may it lose its oldest data.  _took: its pty took bytes since the last look.
        self._stalled = False
        self._took = False
        self._stall_timer: asyncio.TimerHandle | None = None
        self._settings_for = -1  # the link's connection count when the settings were last refreshed for it
        self._settings_source: tuple[Termios2, Termios2 | None] | None = None  # (pty termios, view) read last
        # --emulate-baud: the program's data taken at the line rate (a timer wakes reading when the
        # emulated transmitter has room again).
        self._pacer = LinePacer(self.effective_settings) if config.emulate_baud else None
        self._pace_timer: asyncio.TimerHandle | None = None
        # Express (vcom.port.express): the relay that has the pty and the socket while the port is hot, and
        # the wake-ups counted to find out that it is.
        self._relay: express.Relay | express.Shared | None = None
        self._heat = 0
        self._heat_since = 0.0
        self._express_asked = False
        self.express_runs = 0  # times the port went express
        self._loop = asyncio.get_running_loop()

    @property
    def is_open(self) -> bool:
        return self._session

    @property
    def effective_settings(self) -> LineSettings:
        """What goes to the remote: the program's settings with the pinned values applied."""
        return self.settings.with_(**self._pins) if self._pins else self.settings

    @property
    def blocked(self) -> bool:
        """The program has fallen PTY_BACKLOG behind: this port takes no more network data for now."""
        return len(self._to_pty) >= PTY_BACKLOG

    @property
    def holding_back(self) -> bool:
        """A split member whose program reads but has fallen SPLIT_BUFFER behind: the link waits for it."""
        return not self._stalled and len(self._to_pty) >= SPLIT_BUFFER

    @property
    def holding(self) -> bool:
        """Bytes a program that closed wrote are still in the pty, on their way out."""
        return self._closing

    # -- life cycle

    def start(self, *, replace_symlink: bool = False, adopt: int | None = None) -> None:
        """Create the pty and its symlink, or take over ``adopt``, the master an earlier manager left (the
        programs on it keep their descriptors)."""
        adopted = adopt is not None and self.pty.adopt(adopt)
        if not adopted:
            self.pty.open(replace_symlink=replace_symlink)
        try:
            self._unwatch = self._watch(self.pty.slave_path, self._slave_event)
        except BaseException:
            self.pty.close()
            raise
        self.group.join(self)
        if self.host is not None:
            self.host.keep(self)
        self._refresh_settings()
        if self.group.config.connect == "always":
            self.link.start()
        self._slave_event(False)
        log.info("%s: %s (pty %s, remote %s, connect %s)", self.name, "taken over" if adopted else "ready",
                 self.pty.slave_path, self.link.target, self.group.config.connect)

    async def close(self, *, keep: bool = False) -> None:
        """Remove the port; with ``keep`` (the manager hands over to a new one) the pty and its symlink stay
        for the next manager, kept alive by the keeper or systemd's store."""
        self.express_stop()
        self._cancel_break()
        self._cancel_closing_timer()
        self._cancel_stall()
        if self._pace_timer is not None:
            self._pace_timer.cancel()
            self._pace_timer = None
        self.modem_counter.cancel_all(OSError(errno.EIO, "the port was removed"))
        self._set_reading(False)
        self._set_writing(False)
        self._session = self._closing = False
        await self.group.leave(self)
        self.view.forget()
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        if not keep and self.host is not None:
            self.host.forget(self)
        self.pty.close(remove_link=not keep)

    def status(self) -> dict[str, Any]:
        return port_status(self)

    # -- the program's side: what it wrote

    def _on_readable(self) -> None:
        self._read_some()
        self._warm()
        if not (self._live and self.link.writable) or self._pacer is not None:
            self._update_io()

    def _read_some(self) -> int:
        """Read and pass on what the pty holds, within one wake-up's budget; how many data bytes came.

        The data read before a status byte is sent before the status byte is acted on: settings changes
        keep their place between the bytes."""
        got = 0
        budget = _READ_BUDGET
        link = self.link
        pacer = self._pacer
        while budget > 0 and self._live and link.writable:
            if pacer is not None:
                budget = min(budget, pacer.room())
                if budget <= 0:
                    break
            try:
                data, event = self.pty.read_data(budget)
            except OSError as exc:
                log.error("%s: reading the pty failed: %s", self.name, exc)
                break
            if data:
                link.send(data)
                if pacer is not None:
                    pacer.took(len(data))
                if self.taps:
                    self.taps.emit("data", dir="out", data=data.hex())
                got += len(data)
            if event is None:
                break  # nothing more queued, or the budget is spent
            self._handle(event)
            budget -= len(data) + READ_SIZE  # a status byte costs a read
        return got

    def _handle(self, chunk: PtyRead) -> None:
        if chunk.ioctl or chunk.dostop or chunk.nostop:
            self._refresh_settings(if_changed=True)
        delivered, self.pty.delivered = self.pty.delivered, False  # since the status byte before this one
        if chunk.flush_read or chunk.flush_write:
            if chunk.flush_read and delivered:
                # What vcom wrote between the program's tcflush and now came from before the flush too.  Only
                # if vcom wrote at all since the last status byte: the discard sets the termios it reads,
                # which undoes a change the program makes meanwhile (TCSAFLUSH flushes, then sets: setraw
                # right after open would be left in canonical mode, reading nothing without a newline).
                with contextlib.suppress(OSError):
                    self.pty.discard_output()
            self._flush(receive=chunk.flush_read, transmit=chunk.flush_write)
        if chunk.data:
            self.link.send(chunk.data)
            if self.taps:
                self.taps.emit("data", dir="out", data=chunk.data.hex())
        if chunk.closed:
            # Everything written before the last close has been read; a closed slave keeps the master
            # in POLLHUP, which would spin the loop: stop until the next open.
            self._live = False
            self._maybe_finish()

    async def _send_pending(self) -> None:
        """Before an interposed change takes effect: hand every byte the program wrote before it to the
        link, so that those bytes leave first, under the settings and lines they were written with.  While
        the link cannot take them (connecting, back-pressure) the program's call waits, as its writes do.
        Bounded: a writer in another thread that never stops cannot hold the change back for ever."""
        self.express_stop()
        left = _PENDING_LIMIT
        while True:
            left, wait = self._pass_pending(left)
            if wait is None:
                return
            if wait == "line":
                assert self._pacer is not None
                await asyncio.sleep(self._pacer.ready_in())  # the emulated line takes them at its rate
                continue
            waiter = self._loop.create_future()
            self._writable_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._writable_waiters:
                    self._writable_waiters.remove(waiter)

    def _pass_pending(self, left: int) -> tuple[int, str | None]:
        """Hand what the pty holds to the link while it takes it, up to ``left`` bytes.  Returns what is
        left of that budget, and None when done (nothing pending, or the budget spent), else what must be
        waited for: "line" (the emulated line rate) or "link" (connecting, back-pressure)."""
        while self._live and left > 0 and self.pty.has_pending():
            if self._pacer is not None and self._pacer.room() == 0:
                return left, "line"
            if not self.link.writable:
                return left, "link"
            left -= max(self._read_some(), 1)
            self._update_io()
        return left, None

    # -- settings

    def _refresh_settings(self, current: Termios2 | None = None, *, if_changed: bool = False) -> None:
        """Settings from the program's termios to the link (and the emulated line).  ``current``: the
        pty's termios if just read (an interposed change applies it and reads it back).  ``if_changed``:
        the kernel reported a termios change, which may be the one just taken (every set raises the
        report, our own included): nothing to do when the pty and the view are as they were."""
        if not self.read_settings(current, if_changed=if_changed):
            return
        self.group.member_settings(self)
        if self._pacer is not None:
            self._pacer.set_settings(self.effective_settings)
            self._repace()

    def _settings_ahead(self, asked: Termios2) -> None:
        """An interposed change's line settings, to the link before the pty takes the change: what the
        program asked is what goes on the wire (the pty only forces its data bits and parity, which the
        wire gets as asked anyway), and the pty's two ioctls then follow the send instead of preceding it.
        The refresh from what the pty kept comes right after and sends whatever differs."""
        if self._take_settings(termio.to_line_settings(asked, fallback_baud=self.settings.baud)):
            self.group.member_settings(self)

    def _take_settings(self, settings: LineSettings) -> bool:
        """The program's settings from now on; whether they differ from the last ones (said in the log)."""
        if settings == self.settings:
            return False
        if log.isEnabledFor(logging.INFO):  # describe() is not free, and this runs on every speed change
            log.info("%s: program set %s", self.name, settings.describe())
        if self.taps:
            self.taps.emit("settings", settings=settings.to_json(), text=settings.describe())
        self.settings = settings
        return True

    def read_settings(self, current: Termios2 | None = None, *, if_changed: bool = False) -> bool:
        """Take the program's termios (from the pty, with what it asked through the interposer); False
        when ``if_changed`` and nothing changed since the last time."""
        try:
            if current is None:
                current = self.pty.termios()
            with contextlib.suppress(OSError):
                if self.pty.ensure_extproc(current):
                    current = self.pty.termios()
            source = (current, self.view.requested)
            if if_changed and source == self._settings_source:
                return False
            tio = self.view.for_wire(current)
        except OSError as exc:
            log.error("%s: reading termios failed: %s", self.name, exc)
            return True
        self._settings_source = source
        self.hangup = termio.speed_of(tio) == 0
        self.hupcl = bool(tio.cflag & termios.HUPCL)
        self.clocal = bool(tio.cflag & termios.CLOCAL)
        self._take_settings(termio.to_line_settings(tio, fallback_baud=self.settings.baud))
        return True

    def _flush(self, *, receive: bool, transmit: bool) -> None:
        self.express_stop()
        if self.taps:
            self.taps.emit("purge", receive=receive, transmit=transmit)
        # tcflush(TCIFLUSH) discards what the program has not read: the remote's receive buffer and
        # what we still hold for the program go too.  TCOFLUSH discards what it wrote and we have not sent.
        if receive and self._to_pty:
            self._to_pty.clear()
            self._cancel_stall()
            self._set_writing(False)
            self.group.member_drained()
        if transmit and self._pacer is not None:
            self._pacer.clear()  # a UART's TCOFLUSH empties its transmit FIFO
            self._repace()
        self.link.purge(receive=receive, transmit=transmit)

    def hang_up(self, reason: str) -> None:
        """Hang the program up as a modem line drop does on a real port: close the pty under it (EOF on
        read, SIGHUP to the session it controls) and put a new one behind the same path and termios."""
        log.warning("%s: hanging up the program: %s", self.name, reason)
        self.express_stop()
        self.hangups += 1
        try:
            saved = self.pty.termios()
        except OSError:
            saved = None
        self.modem_counter.cancel_all(OSError(errno.EIO, "hung up"))
        self._set_reading(False)
        self._set_writing(False)
        self._to_pty.clear()
        self._cancel_stall()
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        self.pty.close(remove_link=False)
        self._live = False
        if self._session:
            self._finish_close()
        try:
            self.pty.open(replace_symlink=True)
            if saved is not None:
                termio.set_termios2(self.pty.master_fd, saved)
            self._unwatch = self._watch(self.pty.slave_path, self._slave_event)
        except (OSError, ValueError) as exc:
            log.error("%s: cannot recreate the port after the hang-up: %s", self.name, exc)
            return
        if self.host is not None:
            self.host.keep(self)  # the new pty replaces the old one in the store
        self._slave_event(False)

    # -- the network's side

    def deliver(self, data: bytes, *, bounded: bool) -> None:
        """Network data for the program.  ``bounded``: a split member; one that has stalled keeps at most
        SPLIT_BUFFER and drops its oldest, one that reads loses nothing (the group waits for it)."""
        if self._relay is not None:
            self.express_stop()
        if self.taps:
            self.taps.emit("data", dir="in", data=data.hex(), dropped=not self._session or self._closing)
        if not self._session or self._closing or not self.pty.slave_is_open():
            # A real UART drops what arrives while nobody has the port open.  The kernel would keep it for the
            # next program; the poll also covers a close that inotify has not reported yet.
            self.dropped_bytes += len(data)
            return
        if self._to_pty:
            self._to_pty += data
        else:
            taken = self._write_pty(data)
            if taken == len(data):
                if not bounded:
                    self._warm()
                return
            self._to_pty += memoryview(data)[taken:]
            self._set_writing(True)
        if not bounded:
            return
        if self._stalled and len(self._to_pty) > SPLIT_BUFFER:
            excess = len(self._to_pty) - SPLIT_BUFFER
            del self._to_pty[:excess]
            self.dropped_bytes += excess
        elif not self._stalled and len(self._to_pty) >= SPLIT_BUFFER and self._stall_timer is None:
            self._took = False
            self._stall_timer = self._loop.call_later(STALL_TIME, self._stall_check)

    def _stall_check(self) -> None:
        """This member has been holding its group back: stalled if its program took nothing meanwhile."""
        self._stall_timer = None
        if not self.holding_back:
            return
        if self._took:
            self._took = False
            self._stall_timer = self._loop.call_later(STALL_TIME, self._stall_check)
            return
        self._stalled = True
        log.info("%s: the program stopped reading; the other ports of the group go on without it", self.name)
        self.group.member_drained()

    def _cancel_stall(self) -> None:
        self._stalled = False
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def link_writable(self, writable: bool) -> None:
        if writable:
            if self._settings_for != self.link.stats.connects:
                # A new connection: the settings as they are now (not on every end of back-pressure).
                self._settings_for = self.link.stats.connects
                self._refresh_settings()
            for waiter in self._writable_waiters:
                if not waiter.done():
                    waiter.set_result(None)
        self._update_io()

    def _on_pty_writable(self) -> None:
        blocked, held_back = self.blocked, self.holding_back
        if self._closing or not self.pty.slave_is_open():  # the slave's close wakes this too (POLLHUP)
            self.dropped_bytes += len(self._to_pty)
            self._to_pty.clear()
        else:
            taken = self._write_pty(self._to_pty)
            if taken:
                del self._to_pty[:taken]
                self._took = True
                self._stalled = False  # its program reads again: from now on it loses nothing
        if not self._to_pty:
            self._set_writing(False)
            self._cancel_stall()
        if (blocked and not self.blocked) or (held_back and not self.holding_back):
            self.group.member_drained()

    def _write_pty(self, data: bytes | bytearray) -> int:
        try:
            return self.pty.write(data)
        except OSError as exc:
            log.error("%s: writing to the pty failed: %s", self.name, exc)
            return 0

    # -- event-loop registration

    def _update_io(self) -> None:
        reading = self._live and self.link.writable
        if reading and self._pacer is not None and self._pacer.room() == 0:
            reading = False
            if self._pace_timer is None:
                self._pace_timer = self._loop.call_later(self._pacer.ready_in(), self._paced)
        self._set_reading(reading)

    def _paced(self) -> None:
        self._pace_timer = None
        self._update_io()

    def _repace(self) -> None:
        """The emulated line's rate or queue changed: the wait armed for the old one no longer holds."""
        if self._pace_timer is not None:
            self._pace_timer.cancel()
            self._pace_timer = None
            self._update_io()

    def _set_reading(self, on: bool) -> None:
        if self._relay is not None:
            self.express_stop()
        if on == self._reading:
            return
        self._reading = on
        if on:
            self._loop.add_reader(self.pty.master_fd, self._on_readable)
        else:
            self._loop.remove_reader(self.pty.master_fd)

    def _set_writing(self, on: bool) -> None:
        if self._relay is not None:
            self.express_stop()
        if on == self._writing:
            return
        self._writing = on
        if on:
            self._loop.add_writer(self.pty.master_fd, self._on_pty_writable)
        else:
            self._loop.remove_writer(self.pty.master_fd)
