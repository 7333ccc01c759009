"""What a manager leaves to the next one: the ports' pty masters and the programs' termios.

The manager runs under a service manager that keeps descriptors for it: vcom's
keeper (:mod:`vcom.keeper`) or systemd's file descriptor store.  Each port's
pty master is stored under ``pty=DEVICE`` when it is made (and again when a
hang-up makes a new one) and forgotten when the port is removed.  A new
manager finds them in ``LISTEN_FDS`` and takes them over (:meth:`take`): the
programs on them never notice, and what they wrote meanwhile waits in the pty.

The termios a program set through the interposer (the data bits and parity
the pty cannot keep) lives in the manager's memory; it is also written to a
small memory file stored beside the masters (``state``), so that it survives
with them.  It holds JSON: ``{"views": {DEVICE: {"requested": HEX,
"applied": HEX}}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from typing import TYPE_CHECKING

from .sdnotify import Notifier, fd_name, listen_fds
from .termio import Termios2

if TYPE_CHECKING:
    from .port import Port

log = logging.getLogger(__name__)

STATE = "state"


class Handover:
    """The manager's side of the store: implements :class:`vcom.port.port.PortHost`."""

    def __init__(self, notifier: Notifier | None = None) -> None:
        self.notifier = notifier or Notifier()
        self._stored = {name: fds for name, fds in listen_fds().items()}
        self._state_fd = self._take_state()
        self._views = self._read_views()
        self._watchdog: asyncio.TimerHandle | None = None
        self._write_pending = False

    @property
    def keeps_ports(self) -> bool:
        """Whether ports outlive this process (so a SIGTERM hands them over instead of removing them)."""
        return self.notifier.keeps_descriptors

    # -- taking over

    def take(self, device: str) -> int | None:
        """The stored pty master of ``device``, if the last manager left one."""
        fds = self._stored.pop(fd_name("pty", device), None)
        if not fds:
            return None
        for extra in fds[1:]:
            os.close(extra)
        return fds[0]

    def release_unclaimed(self) -> None:
        """Stored masters of ports that are no longer configured: let them go (their programs see a
        hang-up, as when a port is removed) and their symlinks with them."""
        for name, fds in self._stored.items():
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.notifier.forget(name)
            log.info("a stored port (%s) is no longer configured: released", name)
        self._stored.clear()

    def restore_view(self, port: Port) -> None:
        saved = self._views.get(port.name)
        if not saved:
            return
        with contextlib.suppress(ValueError, KeyError, TypeError):
            port.view.record(Termios2.unpack(bytes.fromhex(saved["requested"])),
                             Termios2.unpack(bytes.fromhex(saved["applied"])))
            port.view.changed()

    # -- PortHost

    def keep(self, port: Port) -> None:
        if port.pty.master_fd >= 0:
            self.notifier.store(fd_name("pty", port.name), port.pty.master_fd)

    def forget(self, port: Port) -> None:
        self.notifier.forget(fd_name("pty", port.name))
        if self._views.pop(port.name, None) is not None:
            self._write_state()

    def view_changed(self, port: Port) -> None:
        view = port.view
        if view.requested is None or view.applied is None:
            self._views.pop(port.name, None)
        else:
            self._views[port.name] = {"requested": view.requested.pack().hex(), "applied": view.applied.pack().hex()}
        self._write_soon()

    def _write_soon(self) -> None:
        # Once the loop's current callbacks have run: the program's change reaches the wire before the
        # state of every port is rewritten, and many changes in one pass make one write.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write_state()
            return
        if not self._write_pending:
            self._write_pending = True
            loop.call_soon(self._write_state)

    # -- watchdog

    def start_watchdog(self, loop: asyncio.AbstractEventLoop) -> None:
        """WATCHDOG=1 from the event loop itself, so that a loop that stalls stops the pings."""
        interval = self.notifier.watchdog_interval
        if interval is None:
            return

        def ping() -> None:
            self.notifier.notify("WATCHDOG=1")
            self._watchdog = loop.call_later(interval / 3, ping)

        ping()

    def stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    # -- the state file

    def _take_state(self) -> int | None:
        fds = self._stored.pop(STATE, None)
        if fds:
            for extra in fds[1:]:
                os.close(extra)
            return fds[0]
        if not self.notifier.present:
            return None
        try:
            fd = os.memfd_create("vcom-state", os.MFD_CLOEXEC)
        except (AttributeError, OSError):
            return None
        self.notifier.store(STATE, fd)
        return fd

    def _read_views(self) -> dict[str, dict[str, str]]:
        if self._state_fd is None:
            return {}
        try:
            size = os.fstat(self._state_fd).st_size
            data = json.loads(os.pread(self._state_fd, size, 0) or b"{}")
            views = data.get("views", {})
            return views if isinstance(views, dict) else {}
        except (OSError, ValueError, AttributeError):
            return {}

    def _write_state(self) -> None:
        self._write_pending = False
        if self._state_fd is None:
            return
        data = json.dumps({"views": self._views}).encode()
        with contextlib.suppress(OSError):
            os.pwrite(self._state_fd, data, 0)
            os.ftruncate(self._state_fd, len(data))
