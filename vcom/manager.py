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
import dataclasses
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from . import configfile, control, controlserver, fdlimit, onbehalf
from .config import ConfigError, PortConfig, tls_files
from .handover import Handover
from .inotify import IN_CLOSE_NOWRITE, IN_CLOSE_WRITE, IN_OPEN, Inotify
from .interposer.server import InterposerServer
from .metrics import start_metrics
from .onbehalf import Caller
from .paths import Paths
from .port import LinkGroup, Port
from .portpath import DEVICE_ADVICE, TLS_ADVICE, check_same_directory, check_same_file
from .pty import PortPathError, check_port_path
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
        self._callbacks: dict[int, Callable[[bool], None]] = {}
        self._loop = loop
        loop.add_reader(self._inotify.fd, self._on_events)

    def watch(self, path: str, callback: Callable[[bool], None]) -> Callable[[], None]:
        """Call ``callback(opened)`` after opens or closes of ``path``; ``opened``: an open was among them
        (a program may have opened, written and closed before anyone looks)."""
        wd = self._inotify.add_watch(path, self._MASK)
        self._callbacks[wd] = callback

        def unwatch() -> None:
            if self._callbacks.pop(wd, None) is not None:
                self._inotify.rm_watch(wd)

        return unwatch

    def _on_events(self) -> None:
        events = self._inotify.read_events()
        touched: dict[int, bool] = {}
        for event in events:
            touched[event.wd] = touched.get(event.wd, False) or bool(event.mask & IN_OPEN)
        if -1 in touched:  # queue overflow: we do not know who changed, ask everyone as if opened
            touched = dict.fromkeys(self._callbacks, True)
        for wd, opened in touched.items():
            callback = self._callbacks.get(wd)
            if callback is None:
                continue
            try:
                callback(opened)
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
        self._by_rdev: dict[int, Port] = {}
        self._file = configfile.ConfigFile(paths.config)
        self._handover: Handover | None = None
        # How the manager ends: "teardown" removes every port; "handover" leaves the ptys and their symlinks
        # to the next manager (SIGTERM while a keeper or systemd keeps the descriptors).
        self._ending = "teardown"
        self._fds_near = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.paths.check()
        if control.manager_running(self.paths.socket):
            raise ManagerError(f"a vcom manager already runs on {self.paths.socket}")
        loaded = self._file.load()  # ConfigSyntaxError: a file that cannot be read stops the start (not 0 ports)
        handover = self._handover = Handover()
        loop.add_signal_handler(signal.SIGTERM, self._stop_for, "handover" if handover.keeps_ports else "teardown")
        loop.add_signal_handler(signal.SIGINT, self._stop_for, "teardown")
        fdlimit.quiet_accept_errors(loop)
        before, after = fdlimit.raise_soft_limit()
        if after != before:
            log.info("file descriptor limit raised from %d to %d (about %d ports)", before, after,
                     (after - fdlimit.RESERVE) // fdlimit.PER_PORT)
        self._watcher = SlaveWatcher(loop)
        loop.add_signal_handler(signal.SIGHUP, self.reload_tls)  # `systemctl reload`, as `vcom reload`
        server = None
        interposer = None
        metrics = None
        udev = None
        try:
            self._start_configured(loaded)
            handover.release_unclaimed()
            await self._start_configured_shares()
            # The pid file before the control socket: whoever sees the manager answer may look it up.
            _write_pid(self.paths.pid)
            server = await controlserver.serve(self.paths.socket, self.handle)
            interposer = InterposerServer(self.paths.interposer, self._port_by_rdev)
            await interposer.start()
            if self._metrics_addr:
                metrics = await start_metrics(self._metrics_addr, self.snapshot)
            udev = UdevWatcher(loop, self._link_up, self._tty_added, lambda node: None)
            udev.start()
            log.info("manager ready: %d port(s), control socket %s", len(self.ports), self.paths.socket)
            handover.notifier.notify(f"READY=1\nSTATUS={self._status_line()}")
            self._check_fds()
            handover.start_watchdog(loop)
            await self._stop.wait()
        finally:
            keep = self._ending == "handover"
            handover.stop_watchdog()
            handover.notifier.notify("STOPPING=1")
            log.info("manager stopping%s", "; the ports stay for the next manager" if keep else "")
            if udev is not None:
                udev.close()
            if metrics is not None:
                metrics.close()
            if interposer is not None:
                await interposer.close()
            if server is not None:
                await server.close()
            for port in list(self.ports.values()):
                await port.close(keep=keep)
            self.ports.clear()
            for share in list(self.shares.values()):
                await share.close()
            self.shares.clear()
            self._watcher.close()
            for path in (self.paths.socket, self.paths.pid):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def _stop_for(self, ending: str) -> None:
        self._ending = ending
        self._stop.set()

    def _start_configured(self, loaded: configfile.Loaded) -> None:
        for problem in loaded.problems:
            log.error("%s (skipped; left in the file)", problem)
            link = problem.device if problem.table == "port" and problem.device else None
            if link and os.path.islink(link) and os.readlink(link).startswith("/dev/pts/"):
                os.unlink(link)  # left by a crash, leading nowhere or to another program's pty
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
        port = Port(cfg, group, self._watcher.watch, host=self._handover)
        adopt = None
        if self._handover is not None:
            self._handover.restore_view(port)
            adopt = self._handover.take(cfg.device)
        port.start(replace_symlink=replace_symlink, adopt=adopt)
        self.ports[cfg.device] = port
        return port

    def snapshot(self) -> dict[str, Any]:
        """What `vcom status --json` shows without a device; also what the metrics endpoint reads."""
        return {"ports": [self._status(d) for d in self._configs],
                "shares": [self._share_status(d) for d in self._share_configs],
                "problems": [p.to_json() for p in self._file.problems]}

    def reload_tls(self) -> list[str]:
        """SIGHUP and `vcom reload`: every link and share reads its TLS files again; nobody is disconnected.
        Returns one line per item whose files cannot be used (it keeps the ones it had)."""
        problems = []
        for port in self.ports.values():
            if port.link.target.tls and port.group.primary is port:
                error = port.link.reload_tls()
                if error:
                    problems.append(f"{port.name}: {error}")
        for share in self.shares.values():
            error = share.reload_tls()
            if error:
                problems.append(f"share {share.name}: {error}")
        for problem in problems:
            log.error("reload: %s; the files read before stay in use", problem)
        log.info("reload: TLS files read again%s", f", {len(problems)} could not be used" if problems else "")
        return problems

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
        # The interposer names a port by its slave's device number, which changes when a pty is recreated
        # (hang-up): the index is checked on every hit and rebuilt on a miss, so it never needs upkeep.
        port = self._by_rdev.get(rdev)
        if port is None or port.pty.slave_rdev != rdev or self.ports.get(port.name) is not port:
            self._by_rdev = {p.pty.slave_rdev: p for p in self.ports.values() if p.pty.master_fd >= 0}
            port = self._by_rdev.get(rdev)
        return port

    # -- control requests

    async def handle(self, request: dict[str, Any], caller: Caller) -> dict[str, Any]:
        cmd = request["cmd"]
        handler = getattr(self, f"_cmd_{cmd}", None)
        if handler is None:
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        async with self._lock:
            try:
                return await handler(request, caller)
            except (ConfigError, PortPathError, ManagerError, ShareError) as exc:
                return {"ok": False, "error": str(exc)}
            except OSError as exc:  # the config file could not be written
                return {"ok": False, "error": f"{self.paths.config}: {exc.strerror or exc}"}

    async def _cmd_ping(self, request: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return {"ok": True, "pid": os.getpid()}

    async def _cmd_add(self, request: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """One port (``port``) or several (``ports``), all or none, saved with one edit of the file."""
        many = request.get("ports")
        raw = many if isinstance(many, list) else [request.get("port") or {}]
        configs: list[PortConfig] = []
        for index, entry in enumerate(raw, 1):
            try:
                configs.append(PortConfig.from_json(entry if isinstance(entry, dict) else {}))
            except ConfigError as exc:
                if len(raw) == 1:
                    raise
                raise ConfigError(f"port #{index}: {exc}", exc.key, exc.value) from None
        # Before anything reads a TLS file as root (_check_new_port): what the caller may not read, it does not
        # learn about either.
        await _on_behalf(caller, ports=[cfg.device for cfg in configs],
                         tls_files=[(_option(key), path) for cfg in configs for key, path in tls_files(cfg)])
        seen = request.get("seen")  # the client's view of each port's directory (vcom add sends it)
        seen = seen if isinstance(seen, dict) else {}
        batch: dict[str, PortConfig] = {}
        for cfg in configs:
            if cfg.device in batch:
                raise ManagerError(f"{cfg.device} is given twice")
            check_same_directory(cfg.device, seen.get(cfg.device))
            for key, path in tls_files(cfg):
                check_same_file(_option(key), path, request.get("seen_files"), TLS_ADVICE)
            self._check_new_port(cfg, batch)
            batch[cfg.device] = cfg
        self._file.check_new("port", list(batch))
        started: list[str] = []
        try:
            for cfg in sorted(batch.values(), key=lambda c: c.split_of is not None):
                try:
                    self._start_port(cfg, replace_symlink=False)
                except OSError as exc:
                    raise ManagerError(f"cannot create {cfg.device}: {exc.strerror or exc}") from None
                self._configs[cfg.device] = cfg
                started.append(cfg.device)
            self._file.append("port", [cfg.to_json() for cfg in configs])
        except BaseException:
            for device in reversed(started):  # all or none: the file did not get them either
                self._configs.pop(device, None)
                port = self.ports.pop(device, None)
                if port is not None:
                    await port.close()
            raise
        self._check_fds()
        answer: dict[str, Any] = {"ok": True, "port": self.ports[configs[0].device].status()}
        if isinstance(many, list):
            answer["ports"] = [self.ports[cfg.device].status() for cfg in configs]
        return answer

    def _port_tty(self, verb: str, device: str) -> list[tuple[str, str, str]]:
        """What a member must be able to open to ``verb`` the port: its pty, when it has one (an entry
        whose port is not running leaves nothing to protect)."""
        port = self.ports.get(device)
        tty = port.pty.slave_path if port is not None and port.pty.master_fd >= 0 else ""
        return [(verb, device, tty)] if tty else []

    def _check_new_port(self, cfg: PortConfig, batch: dict[str, PortConfig]) -> None:
        if cfg.device in self._configs:
            raise ManagerError(f"{cfg.device} is already a vcom port (vcom remove {cfg.device} first)")
        if cfg.split_of:
            primary = self._configs.get(cfg.split_of) or batch.get(cfg.split_of)
            if primary is None:
                raise ManagerError(f"--split-of {cfg.split_of}: not a vcom port")
            if primary.split_of:
                raise ManagerError(f"--split-of {cfg.split_of}: that port is itself split from {primary.split_of}; "
                                   f"split from {primary.split_of} instead")
            if primary.parsed_target != cfg.parsed_target:
                raise ManagerError(f"--split-of {cfg.split_of}: it reaches {primary.target}, not {cfg.target}")
        options = cfg.parsed_target.tls_options
        if options is not None:  # files that cannot be used are refused now, not found at the first connect
            from .tls import client_context

            client_context(options)
        check_port_path(cfg.device, replace_symlink=False)

    async def _cmd_remove(self, request: dict[str, Any], caller: Caller) -> dict[str, Any]:
        device = _absolute(request.get("device"))
        await _on_behalf(caller, uses=self._port_tty("remove", device))
        if device not in self._configs:
            if self._file.remove("port", device):  # an entry vcom could not use: the user wants it gone
                return {"ok": True}
            raise ManagerError(f"{device} is not a vcom port")
        splits = [c.device for c in self._configs.values() if c.split_of == device]
        if splits:
            raise ManagerError(f"{device} has split ports ({', '.join(splits)}); remove them first")
        self._file.remove("port", device)  # first: a file vcom may not write keeps the port too
        port = self.ports.pop(device, None)
        if port is not None:
            await port.close()
        del self._configs[device]
        return {"ok": True}

    async def _cmd_share(self, request: dict[str, Any], caller: Caller) -> dict[str, Any]:
        cfg = ShareConfig.from_json(request.get("share") or {})
        if cfg.device in self._share_configs:
            raise ManagerError(f"{cfg.device} is already shared (vcom unshare {cfg.device} first)")
        seen = request.get("seen_files")  # the files as the client sees them (vcom share sends it)
        check_same_file("device", cfg.device, seen, DEVICE_ADVICE)
        for key, path in tls_files(cfg):
            check_same_file(_option(key), path, seen, TLS_ADVICE)
        await _on_behalf(caller, devices=[] if cfg.device.startswith("sim:") else [cfg.device],
                         tls_files=[(_option(key), path) for key, path in tls_files(cfg)])
        self._file.check_new("share", [cfg.device])
        share = Share(cfg)
        await share.start()
        if cfg.listen_port == 0:
            # The kernel picked the port: the file keeps that one, so that a restart serves the clients
            # that were told it, rather than a new random port.
            cfg = dataclasses.replace(cfg, listen_port=share.port)
        try:
            self._file.append("share", [cfg.to_json()])
        except BaseException:
            await share.close()
            raise
        self.shares[cfg.device] = share
        self._share_configs[cfg.device] = cfg
        return {"ok": True, "share": share.status()}

    async def _cmd_unshare(self, request: dict[str, Any], caller: Caller) -> dict[str, Any]:
        device = _share_key(request.get("device"))
        if device in self._share_configs and not device.startswith("sim:"):
            await _on_behalf(caller, uses=[("unshare", device, device)])
        if device not in self._share_configs:
            if self._file.remove("share", device):  # an entry vcom could not use: the user wants it gone
                return {"ok": True}
            raise ManagerError(f"{device} is not shared")
        self._file.remove("share", device)
        share = self.shares.pop(device, None)
        if share is not None:
            await share.close()
        del self._share_configs[device]
        return {"ok": True}

    async def _cmd_list(self, request: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return {"ok": True, "ports": [cfg.to_json() for cfg in self._configs.values()],
                "shares": [cfg.to_json() for cfg in self._share_configs.values()],
                "problems": [p.to_json() for p in self._file.problems]}

    async def _cmd_status(self, request: dict[str, Any], caller: Caller) -> dict[str, Any]:
        device = request.get("device")
        if device:
            path = _absolute(device) if not str(device).lower().startswith("sim:") else None
            if path in self._configs:
                return {"ok": True, "port": self._status(path)}
            key = _share_key(device)
            if key in self._share_configs:
                return {"ok": True, "share": self._share_status(key)}
            for problem in self._file.problems:
                if problem.device and key in (_share_key(problem.device), path):
                    raise ManagerError(f"{device} is not a usable vcom {problem.table}: {problem}")
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

    async def _cmd_monitor(self, request: dict[str, Any], caller: Caller) -> dict[str, Any]:
        device = _absolute(request.get("device"))
        port = self.ports.get(device)
        if port is None:
            raise ManagerError(f"{device} is not a running vcom port")
        await _on_behalf(caller, uses=self._port_tty("monitor", device))

        async def events() -> AsyncIterator[dict[str, Any]]:
            watcher = port.taps.add()
            port.express_stop()  # a monitored port's data goes through the loop, where it is tapped
            try:
                yield {"t": time.time(), "kind": "start", "status": port.status()}
                while True:
                    yield await watcher.queue.get()
            finally:
                port.taps.remove(watcher)

        return {"ok": True, "stream": events()}

    async def _cmd_reload(self, request: dict[str, Any], caller: Caller) -> dict[str, Any]:
        problems = self.reload_tls()
        tls_ports = [name for name, port in self.ports.items() if port.link.target.tls and port.group.primary is port]
        tls_shares = [name for name, share in self.shares.items() if share.config.server_tls is not None]
        return {"ok": True, "ports": tls_ports, "shares": tls_shares, "problems": problems}

    async def _cmd_shutdown(self, request: dict[str, Any], caller: Caller) -> dict[str, Any]:
        if not caller.unrestricted:
            # Every user's ports would go: a member of group vcom manages ports, not the manager itself.
            raise ManagerError("only root and the manager's own user may stop this manager (as root: systemctl "
                               "stop vcom, or vcom shutdown)")
        self._stop_for("teardown")
        return {"ok": True}

    def _status(self, device: str) -> dict[str, Any]:
        port = self.ports.get(device)
        if port is not None:
            return port.status()
        cfg = self._configs[device]
        return {"device": device, "target": cfg.target, "state": "failed", "open": False,
                "last_error": "the port could not be created; see the manager's log"}

    def _notify(self, state: str) -> None:
        if self._handover is not None:
            self._handover.notifier.notify(state)

    def _status_line(self, extra: str = "") -> str:
        return f"{len(self.ports)} port(s), {len(self.shares)} share(s)" + extra

    def _check_fds(self) -> None:
        """Say once (log and systemd status) when the ports bring the descriptors near the limit."""
        near = fdlimit.maybe_near()
        if near is not None and not self._fds_near:
            log.warning("%s (%d ports): near the limit; raise LimitNOFILE (ulimit -n) for the manager",
                        near.describe(), len(self.ports))
            self._notify(f"STATUS={self._status_line(f'; {near.describe()}, near the limit')}")
        elif near is None and self._fds_near:
            self._notify(f"STATUS={self._status_line()}")
        self._fds_near = near is not None


def _absolute(device: object) -> str:
    if not isinstance(device, str) or not device:
        raise ManagerError("a device path is required")
    return os.path.abspath(device)


async def _on_behalf(caller: Caller, **asked: Any) -> None:
    """Refuse what the caller could not do itself (:mod:`vcom.onbehalf`)."""
    refused = await onbehalf.refusal(caller, **asked)
    if refused is not None:
        raise ManagerError(refused)


def _option(key: str) -> str:
    """A setting as `vcom add` and `vcom share` spell it (the only clients that send what they saw)."""
    return "--" + key.replace("_", "-")


def _share_key(device: object) -> str:
    if not isinstance(device, str) or not device:
        raise ManagerError("a device is required")
    return device.lower() if device.lower().startswith("sim:") else os.path.abspath(device)


def _write_pid(path: Path) -> None:
    """Replaced in one step (a new file renamed over the old): whoever reads it, while a new manager takes
    over, finds the old pid or the new one, never an empty file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = path.with_name(f".{path.name}.{os.getpid()}")
    fresh.write_text(f"{os.getpid()}\n")
    os.replace(fresh, path)
