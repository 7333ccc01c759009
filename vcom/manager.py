"""The manager: every port of this vcom home in one asyncio process.

It owns the loop-wide resources (one inotify descriptor for all ports' pty
slaves, the control socket, the config file) and keeps the set of ports.  It
is deliberately thin: what a port does lives in :mod:`vcom.port`.

A failing port never takes the manager down: an entry that cannot be created
at start is reported and skipped, and every control request is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from . import config as configfile
from . import control, fdlimit
from .config import ConfigError, PortConfig
from .inotify import IN_CLOSE_NOWRITE, IN_CLOSE_WRITE, IN_OPEN, Inotify
from .lines import LinesServer
from .metrics import start_metrics
from .paths import Paths
from .port import LinkGroup, Port
from .pty import PortPathError, check_port_path
from .sdnotify import notify
from .share import Share, ShareConfig, ShareError
from .udevwatch import UdevWatcher

log = logging.getLogger(__name__)


class ManagerError(Exception):
    pass


class SlaveWatcher:
    """One inotify descriptor in the loop for the opens and closes of every port's slave."""

    _MASK = IN_OPEN | IN_CLOSE_WRITE | IN_CLOSE_NOWRITE

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._inotify = Inotify()
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._loop = loop
        loop.add_reader(self._inotify.fd, self._on_events)

    def watch(self, path: str, callback: Callable[[], None]) -> Callable[[], None]:
        wd = self._inotify.add_watch(path, self._MASK)
        self._callbacks[wd] = callback

        def unwatch() -> None:
            if self._callbacks.pop(wd, None) is not None:
                self._inotify.rm_watch(wd)

        return unwatch

    def _on_events(self) -> None:
        events = self._inotify.read_events()
        if any(e.wd == -1 for e in events):  # queue overflow: we do not know who changed, ask everyone
            touched = list(self._callbacks)
        else:
            touched = list(dict.fromkeys(e.wd for e in events))
        for wd in touched:
            callback = self._callbacks.get(wd)
            if callback is None:
                continue
            try:
                callback()
            except Exception:
                log.exception("handling an open/close event failed")

    def close(self) -> None:
        self._loop.remove_reader(self._inotify.fd)
        self._inotify.close()


class Manager:
    def __init__(self, paths: Paths, *, metrics: str | None = None) -> None:
        self.paths = paths
        self._metrics_addr = metrics
        self.ports: dict[str, Port] = {}
        self._configs: dict[str, PortConfig] = {}
        self.shares: dict[str, Share] = {}
        self._share_configs: dict[str, ShareConfig] = {}
        self._stop = asyncio.Event()
        self._watcher: SlaveWatcher | None = None
        self._lock = asyncio.Lock()
        self._fds_near = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.paths.check()
        if control.manager_running(self.paths.socket):
            raise ManagerError(f"a vcom manager already runs on {self.paths.socket}")
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        before, after = fdlimit.raise_soft_limit()
        if after != before:
            log.info("file descriptor limit raised from %d to %d (about %d ports)", before, after,
                     (after - fdlimit.RESERVE) // fdlimit.PER_PORT)
        self._watcher = SlaveWatcher(loop)
        server = None
        lines = None
        metrics = None
        udev = None
        try:
            self._start_configured()
            await self._start_configured_shares()
            server = await control.serve(self.paths.socket, self.handle)
            lines = LinesServer(self.paths.lines, self._port_by_rdev)
            await lines.start()
            if self._metrics_addr:
                metrics = await start_metrics(self._metrics_addr, self.snapshot)
            udev = UdevWatcher(loop, self._link_up, self._tty_added, lambda node: None)
            udev.start()
            _write_pid(self.paths.pid)
            log.info("manager ready: %d port(s), control socket %s", len(self.ports), self.paths.socket)
            notify(f"READY=1\nSTATUS={self._status_line()}")
            self._check_fds()
            await self._stop.wait()
        finally:
            notify("STOPPING=1")
            log.info("manager stopping")
            if udev is not None:
                udev.close()
            if metrics is not None:
                metrics.close()
            if lines is not None:
                await lines.close()
            if server is not None:
                await server.close()
            for port in list(self.ports.values()):
                await port.close()
            self.ports.clear()
            for share in list(self.shares.values()):
                await share.close()
            self.shares.clear()
            self._watcher.close()
            for path in (self.paths.socket, self.paths.pid):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def _start_configured(self) -> None:
        loaded = configfile.load(self.paths.config)
        for error in loaded.errors:
            log.error("%s (skipped)", error)
        self._share_configs = {cfg.device: cfg for cfg in loaded.shares}
        for cfg in sorted(loaded.ports, key=lambda c: c.split_of is not None):
            self._configs[cfg.device] = cfg
            try:
                self._start_port(cfg, replace_symlink=True)
            except (PortPathError, ManagerError, OSError, ValueError) as exc:
                log.error("%s: cannot create the port: %s", cfg.device, exc)

    async def _start_configured_shares(self) -> None:
        for cfg in self._share_configs.values():
            share = Share(cfg)
            try:
                await share.start()
            except ShareError as exc:
                log.error("share %s: cannot start: %s", cfg.device, exc)
                continue
            self.shares[cfg.device] = share

    def _start_port(self, cfg: PortConfig, *, replace_symlink: bool) -> Port:
        assert self._watcher is not None
        if not fdlimit.room_for_port(len(self.ports)):
            # The last descriptors stay for the control socket: a full manager must still take `vcom remove`.
            raise ManagerError(f"file descriptor limit reached ({fdlimit.usage().describe()}); "
                               "raise LimitNOFILE (ulimit -n) for the manager")
        if cfg.split_of:
            primary = self.ports.get(cfg.split_of)
            if primary is None:
                raise ManagerError(f"{cfg.split_of} is not a running vcom port (split_of of {cfg.device})")
            group = primary.group
        else:
            group = LinkGroup(cfg)
        port = Port(cfg, group, self._watcher.watch)
        port.start(replace_symlink=replace_symlink)
        self.ports[cfg.device] = port
        return port

    def snapshot(self) -> dict[str, Any]:
        """What `vcom status --json` shows without a device; also what the metrics endpoint reads."""
        return {"ports": [self._status(d) for d in self._configs],
                "shares": [self._share_status(d) for d in self._share_configs]}

    def _link_up(self, ifname: str) -> None:
        # A network came up: ports waiting out their back-off try at once.
        log.info("network interface %s is up: retrying disconnected ports now", ifname)
        for port in self.ports.values():
            port.link.retry_now()

    def _tty_added(self, node: str) -> None:
        share = self.shares.get(node)
        if share is not None:
            share.device_appeared()

    def _port_by_rdev(self, rdev: int) -> Port | None:
        for port in self.ports.values():
            with contextlib.suppress(OSError):
                if os.stat(port.pty.slave_path).st_rdev == rdev:
                    return port
        return None

    # -- control requests

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request["cmd"]
        handler = getattr(self, f"_cmd_{cmd}", None)
        if handler is None:
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        async with self._lock:
            try:
                return await handler(request)
            except (ConfigError, PortPathError, ManagerError, ShareError) as exc:
                return {"ok": False, "error": str(exc)}

    async def _cmd_ping(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "pid": os.getpid()}

    async def _cmd_add(self, request: dict[str, Any]) -> dict[str, Any]:
        cfg = PortConfig.from_json(request.get("port") or {})
        if cfg.device in self._configs:
            raise ManagerError(f"{cfg.device} is already a vcom port (remove it first)")
        if cfg.split_of:
            primary = self._configs.get(cfg.split_of)
            if primary is None:
                raise ManagerError(f"--split-of {cfg.split_of}: not a vcom port")
            if primary.split_of:
                raise ManagerError(f"--split-of {cfg.split_of}: that port is itself split from {primary.split_of}; "
                                   f"split from {primary.split_of} instead")
            if primary.parsed_target != cfg.parsed_target:
                raise ManagerError(f"--split-of {cfg.split_of}: it reaches {primary.target}, not {cfg.target}")
        check_port_path(cfg.device, replace_symlink=False)
        try:
            self._start_port(cfg, replace_symlink=False)
        except OSError as exc:
            raise ManagerError(f"cannot create {cfg.device}: {exc.strerror or exc}") from None
        self._configs[cfg.device] = cfg
        self._save()
        self._check_fds()
        return {"ok": True, "port": self.ports[cfg.device].status()}

    async def _cmd_remove(self, request: dict[str, Any]) -> dict[str, Any]:
        device = _absolute(request.get("device"))
        if device not in self._configs:
            raise ManagerError(f"{device} is not a vcom port")
        splits = [c.device for c in self._configs.values() if c.split_of == device]
        if splits:
            raise ManagerError(f"{device} has split ports ({', '.join(splits)}); remove them first")
        port = self.ports.pop(device, None)
        if port is not None:
            await port.close()
        del self._configs[device]
        self._save()
        return {"ok": True}

    async def _cmd_share(self, request: dict[str, Any]) -> dict[str, Any]:
        cfg = ShareConfig.from_json(request.get("share") or {})
        if cfg.device in self._share_configs:
            raise ManagerError(f"{cfg.device} is already shared (unshare it first)")
        share = Share(cfg)
        await share.start()
        self.shares[cfg.device] = share
        self._share_configs[cfg.device] = cfg
        self._save()
        return {"ok": True, "share": share.status()}

    async def _cmd_unshare(self, request: dict[str, Any]) -> dict[str, Any]:
        device = _share_key(request.get("device"))
        if device not in self._share_configs:
            raise ManagerError(f"{device} is not shared")
        share = self.shares.pop(device, None)
        if share is not None:
            await share.close()
        del self._share_configs[device]
        self._save()
        return {"ok": True}

    async def _cmd_list(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "ports": [cfg.to_json() for cfg in self._configs.values()],
                "shares": [cfg.to_json() for cfg in self._share_configs.values()]}

    async def _cmd_status(self, request: dict[str, Any]) -> dict[str, Any]:
        device = request.get("device")
        if device:
            path = _absolute(device) if not str(device).lower().startswith("sim:") else None
            if path in self._configs:
                return {"ok": True, "port": self._status(path)}
            key = _share_key(device)
            if key in self._share_configs:
                return {"ok": True, "share": self._share_status(key)}
            raise ManagerError(f"{device} is not a vcom port or share")
        usage = fdlimit.usage()
        return {"ok": True, **self.snapshot(),
                "manager": {"fds": usage.open, "fd_limit": usage.limit, "fds_near_limit": usage.near}}

    def _share_status(self, device: str) -> dict[str, Any]:
        share = self.shares.get(device)
        if share is not None:
            return share.status()
        cfg = self._share_configs[device]
        return {"device": device, "protocol": cfg.protocol, "listen": cfg.listen, "device_state": "failed",
                "device_error": "the share could not be started; see the manager's log", "clients": []}

    async def _cmd_monitor(self, request: dict[str, Any]) -> dict[str, Any]:
        device = _absolute(request.get("device"))
        port = self.ports.get(device)
        if port is None:
            raise ManagerError(f"{device} is not a running vcom port")

        async def events() -> AsyncIterator[dict[str, Any]]:
            watcher = port.taps.add()
            try:
                yield {"t": time.time(), "kind": "start", "status": port.status()}
                while True:
                    yield await watcher.queue.get()
            finally:
                port.taps.remove(watcher)

        return {"ok": True, "stream": events()}

    async def _cmd_shutdown(self, request: dict[str, Any]) -> dict[str, Any]:
        self._stop.set()
        return {"ok": True}

    def _status(self, device: str) -> dict[str, Any]:
        port = self.ports.get(device)
        if port is not None:
            return port.status()
        cfg = self._configs[device]
        return {"device": device, "target": cfg.target, "state": "failed", "open": False,
                "last_error": "the port could not be created; see the manager's log"}

    def _status_line(self, extra: str = "") -> str:
        return f"{len(self.ports)} port(s), {len(self.shares)} share(s)" + extra

    def _check_fds(self) -> None:
        """Say once (log and systemd status) when the ports bring the descriptors near the limit."""
        near = fdlimit.maybe_near()
        if near is not None and not self._fds_near:
            log.warning("%s (%d ports): near the limit; raise LimitNOFILE (ulimit -n) for the manager",
                        near.describe(), len(self.ports))
            notify(f"STATUS={self._status_line(f'; {near.describe()}, near the limit')}")
        elif near is None and self._fds_near:
            notify(f"STATUS={self._status_line()}")
        self._fds_near = near is not None

    def _save(self) -> None:
        configfile.save(self.paths.config, list(self._configs.values()), list(self._share_configs.values()))


def _absolute(device: object) -> str:
    if not isinstance(device, str) or not device:
        raise ManagerError("a device path is required")
    return os.path.abspath(device)


def _share_key(device: object) -> str:
    if not isinstance(device, str) or not device:
        raise ManagerError("a device is required")
    return device.lower() if device.lower().startswith("sim:") else os.path.abspath(device)


def _write_pid(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{os.getpid()}\n")
