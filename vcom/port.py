"""A virtual port: where one pty meets one link.

This is the only module that knows both sides.  It turns what the kernel
tells about the pty (opens and closes through inotify, termios changes and
flushes through packet-mode status bytes) into link actions, and moves data
between the two with back-pressure in both directions:

* program -> network: the pty master is read only while the link is
  writable.  When it is not (connecting, socket buffer full, server sent
  FLOWCONTROL-SUSPEND) the program's ``write()`` blocks once the ~18 KiB pty
  buffer is full, as on a UART held off by flow control.
* network -> program: when the pty cannot take more (the program does not
  read), the link stops reading its socket and TCP pushes back on the server.

Ordering between settings and data (the promise documented in README.md):
a settings change is sent to the server before every byte that vcom reads
from the pty after it learns of the change.  The kernel reports a termios
change ahead of data already queued in the pty (the packet-mode status byte
overtakes data), so bytes the program wrote just before ``tcsetattr`` and
that vcom had not read yet leave with the *new* settings; bytes vcom had
already forwarded leave with the old ones.  This matches ``tcsetattr(TCSANOW)``
on a real UART, where bytes still in the transmit FIFO are affected too.  The
common pattern "configure, then write at once" is therefore always right.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from . import termio
from .config import PortConfig
from .link import Backoff, Link
from .pty import Ownership, PtyRead, VirtualPty
from .settings import LineSettings

log = logging.getLogger(__name__)

# Reads per wake-up: one busy port must not starve the others on the shared loop.
_READS_PER_WAKEUP = 16
_READ_SIZE = 65536

WatchFn = Callable[[str, Callable[[], None]], Callable[[], None]]


class Port:
    def __init__(self, config: PortConfig, watch: WatchFn) -> None:
        self.config = config
        self.name = config.device
        self.pty = VirtualPty(
            config.device,
            ownership=Ownership(owner=config.owner, group=config.group, mode=config.mode),
            baud=config.baud,
        )
        self.link = Link(config.parsed_target, self, name=config.device, backoff=Backoff(maximum=config.retry_max))
        self.settings = LineSettings(baud=config.baud)
        self.dropped_bytes = 0  # arrived while no program had the port open
        self.hangup = False  # the program set speed B0
        self._watch = watch
        self._unwatch: Callable[[], None] | None = None
        self._open = False  # a program holds the slave open
        self._live = False  # reading the master may still give data (open, or closed but not yet drained)
        self._reading = False
        self._to_pty = b""  # network data the pty could not take yet (at most one socket read)
        self._writing = False
        self._linger: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- life cycle

    def start(self, *, replace_symlink: bool = False) -> None:
        self.pty.open(replace_symlink=replace_symlink)
        self._unwatch = self._watch(self.pty.slave_path, self._slave_event)
        self._refresh_settings()
        if self.config.connect == "always":
            self.link.start()
        self._slave_event()
        log.info("%s: ready (pty %s, remote %s, connect %s)", self.name, self.pty.slave_path,
                 self.link.target, self.config.connect)

    async def close(self) -> None:
        self._cancel_linger()
        self._set_reading(False)
        self._set_writing(False)
        await self.link.stop()
        for task in list(self._tasks):
            task.cancel()
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        self.pty.close()

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "device": self.name,
            "pty": self.pty.slave_path,
            "connect": self.config.connect,
            "open": self._open,
            "settings": self.settings.to_json(),
            "hangup": self.hangup,
            "dropped_bytes": self.dropped_bytes,
        }
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
        self._cancel_linger()
        self._refresh_settings()
        if self.config.connect == "on-open":
            self.link.start()
        log.info("%s: opened by a program", self.name)
        self._update_io()

    def _closed(self) -> None:
        self._open = False
        if self._to_pty:
            self.dropped_bytes += len(self._to_pty)
            self._to_pty = b""
        self._set_writing(False)
        self.link.resume_reading()
        if self.config.connect == "on-open":
            self._cancel_linger()
            self._linger = self._loop.call_later(self.config.linger, self._linger_over)
        log.info("%s: closed by the last program", self.name)
        self._update_io()

    def _linger_over(self) -> None:
        self._linger = None
        if not self._open:
            self._spawn(self.link.stop())

    def _cancel_linger(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None

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
        if chunk.closed:
            # Everything written before the last close has been read; stop until the next open,
            # because a closed slave keeps the master in POLLHUP and would spin the loop.
            self._live = self.pty.slave_is_open()

    def _refresh_settings(self) -> None:
        with contextlib.suppress(OSError):
            self.pty.ensure_extproc()
        try:
            tio = self.pty.termios()
        except OSError as exc:
            log.error("%s: reading termios failed: %s", self.name, exc)
            return
        self.hangup = termio.speed_of(tio) == 0
        settings = termio.to_line_settings(tio, fallback_baud=self.settings.baud)
        if settings != self.settings:
            log.info("%s: program set %s", self.name, settings.describe())
        self.settings = settings
        self.link.apply_settings(settings)

    def _flush(self, *, receive: bool, transmit: bool) -> None:
        # tcflush(TCIFLUSH) discards what the program has not read: the remote's receive buffer and
        # what we still hold for the program go too.  TCOFLUSH discards what it wrote and we have not sent.
        if receive and self._to_pty:
            self._to_pty = b""
            self._set_writing(False)
            self.link.resume_reading()
        self.link.purge(receive=receive, transmit=transmit)

    # -- the network's side

    def link_data(self, data: bytes) -> None:
        if not self._open and not self.pty.slave_is_open():
            # A real UART drops what arrives while nobody has the port open.
            self.dropped_bytes += len(data)
            return
        if self._to_pty:
            self._to_pty += data
        else:
            written = self._write_pty(data)
            self._to_pty = data[written:]
        if self._to_pty:
            self.link.pause_reading()
            self._set_writing(True)

    def link_writable(self, writable: bool) -> None:
        if writable:
            self._refresh_settings()
        self._update_io()

    def link_changed(self) -> None:
        pass

    def _on_pty_writable(self) -> None:
        if not self._open and not self.pty.slave_is_open():
            self.dropped_bytes += len(self._to_pty)
            self._to_pty = b""
        else:
            written = self._write_pty(self._to_pty)
            self._to_pty = self._to_pty[written:]
        if not self._to_pty:
            self._set_writing(False)
            self.link.resume_reading()

    def _write_pty(self, data: bytes) -> int:
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

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
