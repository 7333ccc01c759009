"""The share: one device, one listener, many clients (see the package docstring)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time
from collections import Counter, deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..access import AllowList, is_loopback
from ..config import ConfigError, ShareConfig, ShareError
from ..device import Device, DeviceError
from ..ratelog import RateLog
from ..rfc2217 import (
    Data,
    Event,
    LineState,
    ModemState,
    NotifyLineState,
    NotifyModemState,
    modem_state,
)
from ..serialdev import open_device
from ..settings import LineSettings, Signals
from ..target import join_host_port
from . import limits
from .clients import Client, StreamClient, format_peer
from .commands import Rfc2217Commands
from .gate import Gate
from .udp import UdpClientTable, UdpEndpoint

if TYPE_CHECKING:
    from ..tls import ServerSide

log = logging.getLogger(__name__)
_problems = RateLog(log)  # refusals: one line per share, reason and address a minute, with a count


class Share(Rfc2217Commands, UdpClientTable):
    """Serves one device to many clients; see the package docstring.  The RFC 2217 commands and the
    UDP client table live in their own modules (:mod:`.commands`, :mod:`.udp`)."""

    def __init__(self, config: ShareConfig, device: Device | None = None) -> None:
        self.config = config
        self.name = config.device
        self.port = 0
        self._device = device
        self._device_state = "closed"  # "open", "gone" (waiting to reopen) or "closed"
        self._device_error: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._udp: UdpEndpoint | None = None
        self._clients: list[Client] = []  # in order of arrival: the first one controls with control="first"
        self._orphans: list[Client] = []  # gone clients whose data still waits for the device
        self._device_blocked = False  # a write came back short; waiting for device_writable
        self._device_paused = False  # every client is full; device.pause_reading() in force
        self._idle_settings: LineSettings | None = None  # to restore when the last client leaves
        self._dtr = False  # levels last set, for devices that cannot read them back
        self._rts = False
        self._break = False
        self._modem = ModemState(0)  # input lines last reported, for delta bits
        self._refused = 0
        self._refusals: Counter[str] = Counter()  # by reason: "full", "per_address", "device"
        self._idle_disconnects = 0
        self._lost_bytes = 0  # device data clients that left never acknowledged
        self._idle_timer: asyncio.TimerHandle | None = None
        self._slow_disconnects = 0
        self._closing = False
        self._reopen_timer: asyncio.TimerHandle | None = None
        self._expiry_timer: asyncio.TimerHandle | None = None
        # Who may connect, and TLS (vcom.share.gate applies both before a connection becomes a client).
        self.access = AllowList(config.allow)
        self._tls: ServerSide | None = None
        self.handshakes: set[asyncio.Task[None]] = set()
        self._denied = 0  # connections (and UDP addresses) refused by --allow
        self._tls_failures = 0
        self._last_refusal: str | None = None
        self._refusals_logged: dict[str, float] = {}
        self.warnings: list[str] = []

    # -- Life cycle --------------------------------------------------------------

    async def start(self) -> None:
        """Open the device and bind the listener; ShareError with a one-line reason on failure."""
        if self._loop is not None:
            raise ShareError(f"share of {self.name} already started")
        tls_config = self.config.server_tls
        if tls_config is not None:
            from ..tls import ServerSide

            try:
                self._tls = ServerSide(tls_config, self.name)
            except ConfigError as exc:
                raise ShareError(exc.reason, exc.key, exc.value) from None
        self._loop = asyncio.get_running_loop()
        try:
            if self._device is None:
                self._device = open_device(self.config.device)
            self._device.open(self)
        except DeviceError as exc:
            self._loop = None  # nothing started: start() may be tried again
            raise ShareError(str(exc)) from None
        self._device_opened()
        try:
            await self._listen()
        except OSError as exc:
            self._device.close()
            self._device_state = "closed"
            self._loop = None
            raise ShareError(f"cannot listen on {self.config.listen}: {os_reason(exc)}") from None
        log.info("share %s: %s%s on %s", self.name, self.config.protocol, " over TLS" if self._tls else "", self.listen)
        self._warn_if_open()
        if self._tls is not None:
            tls = self._tls
            tls.expiry.keep_checking(self._loop, lambda: tls.certificate, lambda: not self._closing)

    async def close(self) -> None:
        """Close every client, the listener and the device."""
        if self._closing:
            return
        self._closing = True
        for timer in (self._reopen_timer, self._expiry_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        if self._tls is not None:
            self._tls.expiry.stop()
        for task in list(self.handshakes):
            task.cancel()
        if self._server is not None:
            self._server.close()
        clients, self._clients = self._clients, []
        self._orphans.clear()
        for client in clients:
            client.close()
        if clients:
            self._restore_idle()
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()
        if self._device is not None and self._device_state == "open":
            self._device.close()
        self._device_state = "closed"
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def listen(self) -> str:
        return join_host_port(self.config.listen_host, self.port)

    async def _listen(self) -> None:
        loop = self._loop
        assert loop is not None
        host, port = self.config.listen_host, self.config.listen_port
        if self.config.protocol == "udp":
            transport, endpoint = await loop.create_datagram_endpoint(
                lambda: UdpEndpoint(self), local_addr=(host, port)
            )
            self._udp = endpoint
            self.port = transport.get_extra_info("sockname")[1]
            return
        telnet = self.config.protocol == "rfc2217"
        self._server = await loop.create_server(lambda: Gate(self, telnet), host, port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    # -- Status ------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        device = self._device
        return {
            "device": self.config.device,
            "device_state": self._device_state,
            "device_error": self._device_error,
            "protocol": self.config.protocol,
            "listen": self.listen,
            "settings": device.settings.to_json() if device is not None else None,
            "signals": device.signals.to_json() if device is not None else Signals().to_json(),
            "device_stats": dict(getattr(device, "stats", {}) or {}),
            "device_paused": self._device_paused,  # every client full: the device is not read
            "device_full": self._device_blocked,  # the device takes no more: clients are not read
            "clients": [client.status() for client in self._clients],
            "refused_clients": self._refused,
            "refusals": dict(self._refusals),
            "slow_disconnects": self._slow_disconnects,
            "idle_disconnects": self._idle_disconnects,
            "lost_bytes": self._lost_bytes,
            "slow_client": self.config.slow_client,
            "client_buffer": self.config.client_buffer,
            "control": self.config.control,
            "max_clients": self.config.max_clients,
            "tls": self._tls.status() if self._tls is not None else None,
            "allow": self.access.to_json(),
            "denied_clients": self._denied,
            "tls_failures": self._tls_failures,
            "last_refusal": self._last_refusal,
            "warnings": list(self.warnings),
            "max_clients_per_address": self.config.max_clients_per_address,
            "idle_timeout": self.config.idle_timeout,
        }

    # -- Access and TLS ----------------------------------------------------------

    @property
    def tls_context(self) -> ssl.SSLContext | None:
        return self._tls.context if self._tls is not None else None

    @property
    def closing(self) -> bool:
        return self._closing

    def refuse(self, peer: object, reason: str, *, denied: bool = False) -> None:
        """A connection turned away before it became a client: counted, and told in one line."""
        if denied:
            self._denied += 1
        elif reason.startswith("TLS: "):
            self._tls_failures += 1
        self._last_refusal = f"{format_peer(peer)}: {reason}"
        # One line per refusal, but a peer that keeps trying (UDP datagrams, a scanner) is told about once a
        # minute; the counters still count every one.
        assert self._loop is not None
        key = f"{peer[0] if isinstance(peer, tuple) else peer} {reason}"
        now = self._loop.time()
        if now - self._refusals_logged.get(key, -limits.REFUSAL_LOG_INTERVAL) >= limits.REFUSAL_LOG_INTERVAL:
            if len(self._refusals_logged) >= 256:
                self._refusals_logged.clear()
            self._refusals_logged[key] = now
            log.warning("share %s: refused %s", self.name, self._last_refusal)

    def reload_tls(self) -> str | None:
        """Read the certificate and keys again (SIGHUP, `vcom reload`): new connections use them, clients
        connected now keep their sessions.  Returns the reason when the files cannot be used (the ones
        read before stay in use)."""
        if self._tls is None:
            return None
        return self._tls.reload()

    def _warn_if_open(self) -> None:
        config = self.config
        if is_loopback(config.listen_host) or config.tls_client_ca or config.allow:
            return
        needs = "--allow" if config.protocol == "udp" else "--tls-client-ca nor --allow"
        warning = (f"share {self.name} listens on {self.listen} with neither {needs}: anyone who can reach "
                   "that address may use the device")
        self.warnings.append(warning)
        log.warning("%s", warning)

    # -- DeviceSink --------------------------------------------------------------

    def device_data(self, data: bytes) -> None:
        for client in list(self._clients):
            client.deliver(data)
            self._apply_slow_policy(client)
        self._update_device_reading()

    def device_signals(self, signals: Signals) -> None:
        state = modem_state(signals)
        previous, self._modem = self._modem, state
        changed = state ^ previous
        if not changed:
            return
        deltas = ModemState(0)
        for line, delta in (
            (ModemState.CTS, ModemState.DELTA_CTS),
            (ModemState.DSR, ModemState.DELTA_DSR),
            (ModemState.CD, ModemState.DELTA_CD),
        ):
            if changed & line:
                deltas |= delta
        if previous & ModemState.RI and not state & ModemState.RI:
            deltas |= ModemState.TRAILING_RI
        for client in self._rfc2217_clients():
            value = (state | deltas) & client.modemstate_mask
            if value:
                client.send_command(NotifyModemState(ModemState(value)))

    def device_line_state(self, state: int) -> None:
        for client in self._rfc2217_clients():
            value = state & client.linestate_mask
            if value:
                client.send_command(NotifyLineState(LineState(value)))

    def device_writable(self) -> None:
        if not self._device_blocked:
            return
        self._device_blocked = False
        for client in self._orphans + self._clients:
            if not self._drain_inbox(client):
                return  # blocked again
        had_orphans = bool(self._orphans)
        self._orphans.clear()
        for client in self._clients:
            client.resume_input()
        if self._udp is not None:
            self._udp.resume_reading()  # also when the client that filled the device has expired
        if had_orphans and not self._clients:
            self._restore_idle()

    def device_gone(self, reason: str) -> None:
        if self._device_state != "open":
            return
        log.warning("share %s: device gone (%s); disconnecting %d client(s)", self.name, reason, len(self._clients))
        self._device_state = "gone"
        self._device_error = reason
        self._device_blocked = self._device_paused = False
        self._idle_settings = None  # the next device starts from its own settings
        clients, self._clients = self._clients, []
        self._orphans.clear()
        for client in clients:
            client.close()
        if self._device is not None:
            self._device.close()
        self._schedule_reopen()

    # -- Device state ------------------------------------------------------------

    def _device_opened(self) -> None:
        device = self._device
        assert device is not None
        self._device_state = "open"
        self._device_error = None
        self._break = self._dtr = self._rts = False
        # Idle lines are down; the kernel raises DTR/RTS when a tty is opened.
        try:
            self._dtr = device.set_dtr(False)
            self._rts = device.set_rts(False)
        except DeviceError as exc:
            log.warning("share %s: cannot drop DTR/RTS: %s", self.name, exc)
        self._modem = modem_state(device.signals)

    def device_appeared(self) -> None:
        """udev saw the device come back: try now instead of at the next reopen tick."""
        if self._device_state == "gone" and self._reopen_timer is not None:
            self._reopen_timer.cancel()
            self._reopen_timer = None
            self._reopen()

    def _schedule_reopen(self) -> None:
        if not self._closing and self._loop is not None:
            self._reopen_timer = self._loop.call_later(limits.REOPEN_INTERVAL, self._reopen)

    def _reopen(self) -> None:
        self._reopen_timer = None
        if self._closing or self._device is None or self._device_state != "gone":
            return
        try:
            self._device.open(self)
        except DeviceError as exc:
            log.debug("share %s: still gone: %s", self.name, exc)
            self._schedule_reopen()
            return
        log.info("share %s: device is back", self.name)
        self._device_opened()

    def _update_device_reading(self) -> None:
        """Pause the device while every client is half full; resume once one is down to a quarter."""
        if self._device_state != "open" or self._device is None:
            return
        high = self.config.client_buffer // 2
        low = self.config.client_buffer // 4
        clients = [c for c in self._clients if isinstance(c, StreamClient)]
        if not self._device_paused:
            if clients and all(c.outbox.size >= high for c in clients):
                self._device_paused = True
                self._device.pause_reading()
        elif not clients or any(c.outbox.size <= low for c in clients):
            self._device_paused = False
            self._device.resume_reading()

    def _apply_slow_policy(self, client: Client) -> None:
        excess = client.outbox.size - self.config.client_buffer
        if excess <= 0:
            return
        if self.config.slow_client == "drop":
            client.dropped += client.outbox.drop_oldest(excess)
            return
        log.warning("share %s: client %s is too slow; disconnecting it", self.name, client.peer)
        self._slow_disconnects += 1
        client.outbox.clear()
        client.close()
        self._client_left(client)

    # -- Clients -----------------------------------------------------------------

    def _admit(self, client: Client) -> bool:
        if self._closing or self._device_state != "open":
            return self._refuse(client, "device", f"device {self._device_state}")
        if len(self._clients) >= self.config.max_clients:
            return self._refuse(client, "full", f"{len(self._clients)} clients already (--max-clients)")
        if isinstance(client, StreamClient):
            same = sum(1 for c in self._clients if c.address == client.address)
            if same >= self.config.max_clients_per_address:
                return self._refuse(client, "per_address", f"{same} clients from {client.address} already "
                                    "(--max-clients-per-address)")
        self._clients.append(client)
        log.info("share %s: client %s connected", self.name, client.peer)
        if len(self._clients) == 1:
            self._first_client()
        if self._device_blocked:
            client.pause_input()
        self._arm_idle_check()
        return True

    def _refuse(self, client: Client, reason: str, why: str) -> bool:
        """Count a refused client and say why, once a minute per reason and address however many come."""
        self._refused += 1
        self._refusals[reason] += 1
        _problems.warning((self.name, reason, client.address), "share %s: refused %s: %s", self.name,
                          client.peer, why)
        return False

    def _arm_idle_check(self) -> None:
        timeout = self.config.idle_timeout
        if timeout and self._idle_timer is None and self._clients and self._loop is not None:
            self._idle_timer = self._loop.call_later(max(timeout / 4, 0.05), self._check_idle)

    def _check_idle(self) -> None:
        """Close clients that neither sent nor took a byte for idle_timeout: a client that holds a place and
        does nothing (a forgotten session, a scanner) must not keep others out."""
        self._idle_timer = None
        now = time.monotonic()
        for client in list(self._clients):
            if isinstance(client, StreamClient) and now - client.last_active >= self.config.idle_timeout:
                self._idle_disconnects += 1
                _problems.info((self.name, "idle", client.address), "share %s: client %s idle for %g s; "
                               "closing it", self.name, client.peer, self.config.idle_timeout)
                client.close()
                self._client_left(client)
        self._arm_idle_check()

    def _client_left(self, client: Client) -> None:
        if client not in self._clients:
            return
        self._clients.remove(client)
        log.info("share %s: client %s left", self.name, client.peer)
        if client.lost:
            self._lost_bytes += client.lost
            _problems.warning((self.name, "lost", client.address), "share %s: client %s left with %d byte(s) of "
                              "device data it never acknowledged", self.name, client.peer, client.lost)
        # What it sent still goes to the device, in order; its commands are moot.
        pending: deque[Event] = deque(event for event in client.inbox if isinstance(event, Data))
        client.inbox = pending
        if pending:
            self._orphans.append(client)
        if not self._clients and not self._orphans:
            self._restore_idle()
        self._update_device_reading()

    def _first_client(self) -> None:
        device = self._device
        assert device is not None
        if self._idle_settings is None:  # else the previous client's data is still draining
            self._idle_settings = device.settings
        # Opening a UART raises DTR and RTS; a client that wants them low says so.
        try:
            self._dtr = self._set_line("dtr", True)
            self._rts = self._set_line("rts", True)
        except DeviceError as exc:
            log.warning("share %s: cannot raise DTR/RTS: %s", self.name, exc)
        self._set_watch(True)

    def _restore_idle(self) -> None:
        """The last client left: lines down and the settings from before it came."""
        device = self._device
        if device is None or self._device_state != "open":
            return
        self._set_watch(False)
        idle, self._idle_settings = self._idle_settings, None
        try:
            if self._break:
                self._break = device.set_break(False)
            self._dtr = device.set_dtr(False)
            self._rts = device.set_rts(False)
            if idle is not None:
                device.apply_settings(idle)
        except DeviceError as exc:
            log.warning("share %s: cannot return the device to idle: %s", self.name, exc)

    def _set_watch(self, on: bool) -> None:
        # A tty polls its modem lines only while a client listens; the Device
        # protocol has no such switch, simulators report changes by themselves.
        watch = getattr(self._device, "watch_signals", None)
        if watch is not None:
            watch(on)

    def _rfc2217_clients(self) -> Iterable[Client]:
        return [c for c in self._clients if c.codec is not None and c.com_port]

    def _may_control(self, client: Client) -> bool:
        if self._device_state != "open":
            return False
        return self.config.control == "all" or (bool(self._clients) and self._clients[0] is client)

    # -- Client to device --------------------------------------------------------------

    def _client_events(self, client: Client, events: Iterable[Event]) -> None:
        client.inbox.extend(events)
        if not self._device_blocked:
            self._drain_inbox(client)

    def _drain_inbox(self, client: Client) -> bool:
        """Handle the client's waiting events in order; False when the device filled up."""
        inbox = client.inbox
        while inbox:
            event = inbox[0]
            if isinstance(event, Data):
                rest = self._write_device(client, event.data)
                if rest:
                    inbox[0] = Data(rest)
                    self._block_device()
                    return False
            elif not client.closed:
                try:
                    self._command(client, event)
                except DeviceError as exc:  # the device failed a request; the client stays
                    log.warning("share %s: %s from %s failed: %s", self.name, type(event).__name__, client.peer, exc)
            inbox.popleft()
        return True

    def _write_device(self, client: Client, data: bytes) -> bytes:
        """Offer ``data`` to the device; returns what it did not take (b"" when dropped)."""
        device = self._device
        if device is None or self._device_state != "open":
            return b""
        try:
            taken = device.write(data)
        except DeviceError as exc:
            log.warning("share %s: write failed: %s", self.name, exc)
            return b""
        client.bytes_in += taken
        if self._device_state != "open":  # the write found the device gone
            return b""
        return data[taken:]

    def _block_device(self) -> None:
        self._device_blocked = True
        for client in self._clients:
            client.pause_input()


def os_reason(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return str(exc.strerror or exc)
    if exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc)
