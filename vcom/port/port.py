"""Virtual ports: where ptys meet a link.

This is the only module that knows both sides.  A :class:`Port` turns what
the kernel tells about one pty (opens and closes through inotify, termios
changes and flushes through packet-mode status bytes) into link actions; a
:class:`LinkGroup` joins one or more ports to one network connection
(several when a remote port is *split*, e.g. two programs reading one GPS).

Back-pressure, in both directions, by not reading:

* program -> network: a pty master is read only while the link is writable.
  When it is not (connecting, socket buffer full, server sent
  FLOWCONTROL-SUSPEND) the program's ``write()`` blocks once the ~18 KiB pty
  buffer is full, as on a UART held off by flow control.
* network -> program: when a pty cannot take more (the program does not
  read), the link stops reading its socket and TCP pushes back on the
  server.  In a split group the link stops only when *every* open member is
  full; a member that stays behind keeps at most ``SPLIT_BUFFER`` bytes and
  then drops its oldest data (counted), so one stalled reader never stalls
  the others.

Ordering between settings and data (documented in README.md): a settings
change is sent to the server before every byte that vcom reads from the pty
after it learns of the change.  The kernel reports a termios change ahead of
data already queued in the pty (the packet-mode status byte overtakes data),
so bytes the program wrote just before ``tcsetattr`` and that vcom had not
read yet leave with the *new* settings, as bytes still in a real UART's FIFO
do after ``tcsetattr(TCSANOW)``.  "Configure, then write at once" is always
right.

Whose settings win in a split group: the first port (the one the others are
split from) while it is open; while it is closed, the member that has been
open longest.  ``vcom status`` shows which (``settings_from``).  Pinned values
(``--data-bits`` and friends) of that port always win over its program's.

Modem lines from what the pty shows (a pty has no TIOCM* ioctls): DTR and RTS
go up when a program opens the port, as a UART driver raises them; they drop
at the last close when HUPCL is set; speed B0 drops DTR (the termios way to
hang up) and a real speed raises it again.  When the remote drops DCD while a
program with CLOCAL off has the port open, the program is hung up as by a
real modem: the pty is closed under it (its reads return EOF, and the session
whose controlling tty it is gets SIGHUP) and a new one takes its place behind
the same path, with the same termios.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import termios
from collections.abc import Callable
from typing import Any

from . import termio
from .config import PortConfig
from .link import Backoff, Lines, Link
from .pty import Ownership, PtyRead, VirtualPty
from .settings import LineSettings, Signals
from .tap import Taps

log = logging.getLogger(__name__)

# Reads per wake-up: one busy port must not starve the others on the shared loop.
_READS_PER_WAKEUP = 16
_READ_SIZE = 65536
# What a split member may hold for its program beyond what its pty took, before it drops the oldest.
SPLIT_BUFFER = 64 * 1024

WatchFn = Callable[[str, Callable[[], None]], Callable[[], None]]


class LinkGroup:
    """One link and the ports that share it; the link's listener."""

    def __init__(self, config: PortConfig) -> None:
        self.config = config  # the first port's: target, connect policy, linger, back-off
        self.link = Link(config.parsed_target, self, name=config.device, backoff=Backoff(maximum=config.retry_max))
        self.members: list[Port] = []
        self._opened_order: list[Port] = []
        self._dcd: bool | None = None
        self._linger: asyncio.TimerHandle | None = None
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
            self._cancel_linger()
            self._linger = self._loop.call_later(self.config.linger, self._linger_over)
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
        accepting = [m for m in self.members if m.is_open]
        if accepting and all(m.blocked for m in accepting):
            self.link.pause_reading()
        else:
            self.link.resume_reading()

    def _linger_over(self) -> None:
        self._linger = None
        if not self._opened_order:
            self.link.stop_nowait()

    def _cancel_linger(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None

    # -- LinkListener

    def link_data(self, data: bytes) -> None:
        for member in self.members:
            member.deliver(data, bounded=len(self.members) > 1)
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

    def link_modem(self, signals: Signals) -> None:
        self._emit("signals", cts=signals.cts, dsr=signals.dsr, dcd=signals.dcd, ri=signals.ri)
        dcd_dropped = self._dcd is True and signals.dcd is False
        self._dcd = signals.dcd
        if not dcd_dropped:
            return
        for member in list(self.members):
            if member.is_open and not member.clocal and member.config.hangup_on_dcd:
                member.hang_up("the remote dropped DCD")


class Port:
    def __init__(self, config: PortConfig, group: LinkGroup, watch: WatchFn) -> None:
        self.config = config
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
        self.hangup = False  # the program set speed B0
        self.hupcl = True  # the program's termios: drop DTR/RTS at the last close
        self.clocal = True  # the program's termios: ignore DCD
        self.hangups = 0  # times the program was hung up because DCD dropped
        self.program_lines: Lines | None = None  # DTR/RTS the program set through the preload library
        self.taps = Taps()  # vcom monitor
        self._break_timer: asyncio.TimerHandle | None = None
        self._pins = config.pins()
        self._watch = watch
        self._unwatch: Callable[[], None] | None = None
        self._open = False  # a program holds the slave open
        self._live = False  # reading the master may still give data (open, or closed but not yet drained)
        self._reading = False
        self._to_pty = bytearray()  # network data the pty could not take yet
        self._writing = False
        self._loop = asyncio.get_running_loop()

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def effective_settings(self) -> LineSettings:
        """What goes to the remote: the program's settings with the pinned values applied."""
        return self.settings.with_(**self._pins) if self._pins else self.settings

    @property
    def blocked(self) -> bool:
        """The pty is full: this port cannot take network data now."""
        return bool(self._to_pty)

    # -- life cycle

    def start(self, *, replace_symlink: bool = False) -> None:
        self.pty.open(replace_symlink=replace_symlink)
        try:
            self._unwatch = self._watch(self.pty.slave_path, self._slave_event)
        except BaseException:
            self.pty.close()
            raise
        self.group.join(self)
        self._refresh_settings()
        if self.group.config.connect == "always":
            self.link.start()
        self._slave_event()
        log.info("%s: ready (pty %s, remote %s, connect %s)", self.name, self.pty.slave_path,
                 self.link.target, self.group.config.connect)

    async def close(self) -> None:
        self._cancel_break()
        self._set_reading(False)
        self._set_writing(False)
        self._open = False
        await self.group.leave(self)
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        self.pty.close()

    def status(self) -> dict[str, Any]:
        source = self.group.settings_source()
        out: dict[str, Any] = {
            "device": self.name,
            "pty": self.pty.slave_path,
            "connect": self.group.config.connect,
            "open": self._open,
            "settings": self.settings.to_json(),
            "effective_settings": self.effective_settings.to_json(),
            "pinned": list(self._pins),
            "hangup": self.hangup,
            "hangup_on_dcd": self.config.hangup_on_dcd,
            "hangups": self.hangups,
            "dropped_bytes": self.dropped_bytes,
        }
        if len(self.group.members) > 1 or self.config.split_of:
            out["split_group"] = [m.name for m in self.group.members]
            out["settings_from"] = source.name if source else None
        out.update(self.link.status())
        return out

    # -- the program's side: opens, closes, reads

    def _slave_event(self) -> None:
        """inotify saw an open or close of the slave: find out what holds now."""
        is_open = self.pty.slave_is_open()
        if is_open and not self._open:
            self._opened()
        elif not is_open and self._open:
            self._closed()

    def _opened(self) -> None:
        self._open = True
        self._live = True
        self._refresh_settings()
        log.info("%s: opened by a program", self.name)
        if self.taps:
            self.taps.emit("open")
        self.group.member_opened(self)
        self._update_io()

    def _closed(self) -> None:
        self._open = False
        self.program_lines = None
        if self._to_pty:
            self.dropped_bytes += len(self._to_pty)
            self._to_pty.clear()
        self._set_writing(False)
        log.info("%s: closed by the last program", self.name)
        if self.taps:
            self.taps.emit("close")
        self.group.member_closed(self)
        self._update_io()

    def _on_readable(self) -> None:
        for _ in range(_READS_PER_WAKEUP):
            if not self.link.writable:
                break
            try:
                chunk = self.pty.read(_READ_SIZE)
            except OSError as exc:
                log.error("%s: reading the pty failed: %s", self.name, exc)
                break
            if chunk is None:
                break
            self._handle(chunk)
            if chunk.closed:
                break
        self._update_io()

    def _handle(self, chunk: PtyRead) -> None:
        if chunk.ioctl or chunk.dostop or chunk.nostop:
            self._refresh_settings()
        if chunk.flush_read or chunk.flush_write:
            self._flush(receive=chunk.flush_read, transmit=chunk.flush_write)
        if chunk.data:
            self.link.send(chunk.data)
            if self.taps:
                self.taps.emit("data", dir="out", data=chunk.data.hex())
        if chunk.closed:
            # Everything written before the last close has been read; stop until the next open,
            # because a closed slave keeps the master in POLLHUP and would spin the loop.
            self._live = self.pty.slave_is_open()

    def _refresh_settings(self) -> None:
        self.read_settings()
        self.group.member_settings(self)

    def read_settings(self) -> None:
        """Take the program's termios from the pty into :attr:`settings`."""
        with contextlib.suppress(OSError):
            self.pty.ensure_extproc()
        try:
            tio = self.pty.termios()
        except OSError as exc:
            log.error("%s: reading termios failed: %s", self.name, exc)
            return
        self.hangup = termio.speed_of(tio) == 0
        self.hupcl = bool(tio.cflag & termios.HUPCL)
        self.clocal = bool(tio.cflag & termios.CLOCAL)
        settings = termio.to_line_settings(tio, fallback_baud=self.settings.baud)
        if settings != self.settings:
            log.info("%s: program set %s", self.name, settings.describe())
            if self.taps:
                self.taps.emit("settings", settings=settings.to_json(), text=settings.describe())
        self.settings = settings

    def _flush(self, *, receive: bool, transmit: bool) -> None:
        if self.taps:
            self.taps.emit("purge", receive=receive, transmit=transmit)
        # tcflush(TCIFLUSH) discards what the program has not read: the remote's receive buffer and
        # what we still hold for the program go too.  TCOFLUSH discards what it wrote and we have not sent.
        if receive and self._to_pty:
            self._to_pty.clear()
            self._set_writing(False)
            self.group.member_drained()
        self.link.purge(receive=receive, transmit=transmit)

    def program_ioctl(self, op: str, value: int) -> int:
        """A modem-line or break call of the program (vcom.lines); returns the TIOCM_* bits in force."""
        if self.taps and op != "get":
            self.taps.emit("break" if op.startswith("break") else "lines", op=op, value=value)
        current = self.link.lines
        dtr, rts = bool(current.dtr), bool(current.rts)
        if op == "set":
            dtr, rts = bool(value & termios.TIOCM_DTR), bool(value & termios.TIOCM_RTS)
        elif op == "bis":
            dtr, rts = dtr or bool(value & termios.TIOCM_DTR), rts or bool(value & termios.TIOCM_RTS)
        elif op == "bic":
            dtr, rts = dtr and not value & termios.TIOCM_DTR, rts and not value & termios.TIOCM_RTS
        elif op in ("break_on", "break_off"):
            self._cancel_break()
            self.link.set_break(op == "break_on")
        elif op == "break":
            self._cancel_break()
            self.link.set_break(True)
            self._break_timer = self._loop.call_later(max(value, 1) / 1000, self._end_break)
        if op in ("set", "bis", "bic"):
            self.program_lines = Lines(dtr=dtr, rts=rts)
            self.group.program_lines_changed(self)
        return self._tiocm_bits()

    def _end_break(self) -> None:
        self._break_timer = None
        self.link.set_break(False)

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

    def hang_up(self, reason: str) -> None:
        """Hang the program up as a modem line drop does on a real port: close the pty under it (EOF on
        read, SIGHUP to the session it controls) and put a new one behind the same path and termios."""
        log.warning("%s: hanging up the program: %s", self.name, reason)
        self.hangups += 1
        try:
            saved = self.pty.termios()
        except OSError:
            saved = None
        self._set_reading(False)
        self._set_writing(False)
        self._to_pty.clear()
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        self.pty.close(remove_link=False)
        self._live = False
        if self._open:
            self._open = False
            self.group.member_closed(self)
        try:
            self.pty.open(replace_symlink=True)
            if saved is not None:
                termio.set_termios2(self.pty.master_fd, saved)
            self._unwatch = self._watch(self.pty.slave_path, self._slave_event)
        except (OSError, ValueError) as exc:
            log.error("%s: cannot recreate the port after the hang-up: %s", self.name, exc)
            return
        self._slave_event()

    # -- the network's side

    def deliver(self, data: bytes, *, bounded: bool) -> None:
        """Network data for the program; ``bounded``: a split member drops its oldest beyond SPLIT_BUFFER."""
        if self.taps:
            self.taps.emit("data", dir="in", data=data.hex(), dropped=not self._open)
        if not self._open and not self.pty.slave_is_open():
            # A real UART drops what arrives while nobody has the port open.
            self.dropped_bytes += len(data)
            return
        if not self._to_pty:
            data = data[self._write_pty(data):]
        self._to_pty += data
        if bounded and len(self._to_pty) > SPLIT_BUFFER:
            excess = len(self._to_pty) - SPLIT_BUFFER
            del self._to_pty[:excess]
            self.dropped_bytes += excess
        self._set_writing(bool(self._to_pty))

    def link_writable(self, writable: bool) -> None:
        if writable:
            self._refresh_settings()
        self._update_io()

    def _on_pty_writable(self) -> None:
        if not self._open and not self.pty.slave_is_open():
            self.dropped_bytes += len(self._to_pty)
            self._to_pty.clear()
        else:
            del self._to_pty[:self._write_pty(self._to_pty)]
        if not self._to_pty:
            self._set_writing(False)
            self.group.member_drained()

    def _write_pty(self, data: bytes | bytearray) -> int:
        try:
            return self.pty.write(data)
        except OSError as exc:
            log.error("%s: writing to the pty failed: %s", self.name, exc)
            return 0

    # -- event-loop registration

    def _update_io(self) -> None:
        self._set_reading(self._live and self.link.writable)

    def _set_reading(self, on: bool) -> None:
        if on == self._reading:
            return
        self._reading = on
        if on:
            self._loop.add_reader(self.pty.master_fd, self._on_readable)
        else:
            self._loop.remove_reader(self.pty.master_fd)

    def _set_writing(self, on: bool) -> None:
        if on == self._writing:
            return
        self._writing = on
        if on:
            self._loop.add_writer(self.pty.master_fd, self._on_pty_writable)
        else:
            self._loop.remove_writer(self.pty.master_fd)
