"""``vcom share``: one serial device served to many network clients.

A :class:`Share` owns one :class:`vcom.device.Device` (a tty or a simulator)
and one listener: an RFC 2217 server, a raw TCP server or a UDP socket.
Everything runs on the caller's asyncio loop; the share is the device's
:class:`vcom.device.DeviceSink`.

Data paths
----------
*Device to clients.*  Every client gets every byte the device sends.  Each
client has its own bounded queue (``client_buffer`` bytes) in front of its
socket, so a client that cannot keep up never stalls the others and never
makes memory grow: in front of its socket only a small asyncio buffer and a
fixed kernel send buffer (``SOCKET_SEND_BUFFER``, not the auto-tuned
megabytes) hold data, and when its queue is full the ``slow_client`` policy
acts on that client alone (``drop``: its oldest queued bytes are discarded and
counted; ``disconnect``: it is closed).  When *every* client is at least half
full, the share calls ``device.pause_reading()`` instead: with nobody able to
take data, holding the device back (its UART buffer fills, then hardware
flow control stops the far end) loses less than dropping the same bytes for
everyone.  Reading resumes as soon as one client is down to a quarter.

*Clients to device.*  Data from any client goes to the device in arrival
order.  ``Device.write`` takes what fits; when it comes back short, the share
stops reading from *all* client sockets until ``device_writable``, and what a
client sent after the data that did not fit (including RFC 2217 commands)
waits in that client's inbox, so a SET-BAUDRATE never overtakes the bytes
sent before it.  The TCP windows then push back on the clients.

RFC 2217 (server role, RFC 2217 "Com Port Option: Introduction" onwards)
--------------------------------------------------------------------------
The telnet bytes are handled by the sans-I/O codec :mod:`vcom.rfc2217`;
this module only deals in its events.

* Every SET is answered with the value in force after applying it (the
  device's return value); value 0 is a query and is answered with the
  current value.  A value the RFC does not define is answered with the
  current one, unchanged.
* SET-CONTROL 1-3 set flow control "outbound/both" (RFC 2217): both
  directions, as pyserial's client expects; 14-16 set inbound only.  DCD,
  DTR and DSR flow control (17-19) cannot be expressed in termios: they are
  answered with the outbound flow control in force.
* DTR/RTS are answered with the level read back from the device.  A tty
  without modem lines (a pty) has none to read: the answer is then the level
  last set, because a client such as pyserial takes any other answer as a
  refusal and will not open the port.
* Notifications: the initial LINESTATE-MASK is 0 and the initial
  MODEMSTATE-MASK is 255 (RFC 2217, SET-LINESTATE-MASK / SET-MODEMSTATE-MASK
  discussions).  NOTIFY-MODEMSTATE carries the lines plus delta bits, ANDed
  with the client's mask, and is sent only when non-zero.  The current state
  is sent once when a client agrees to COM-PORT-OPTION, once after each
  SET-MODEMSTATE-MASK, and on every poll (an empty NOTIFY-MODEMSTATE, as
  pyserial's ``poll_modem`` sends): pyserial's client cannot report CTS/DSR
  before it has received one.
* PURGE-DATA purges the device's buffers and, for the receive direction,
  what the share still holds for that client.  Data the client sent before
  the purge has always been handed to the device by then (inbox order), so
  the device purge is what discards it.
* FLOWCONTROL-SUSPEND / RESUME from a client stop and restart the device
  data sent to that client; meanwhile it queues under the slow-client policy.
* ``control="first"``: only the longest-connected client may change settings,
  signals, break and device buffers; another client's SET is answered with
  the value in force and not applied.

Like a UART being opened, DTR and RTS go up when the first client connects;
when the last one leaves they drop and the line settings go back to what they
were before it came (ser2net does the same), so one client's 300 baud does
not stay for the next.

UDP
---
One socket.  A client is an address that sent at least one datagram; it is
kept for ``UDP_CLIENT_TTL`` seconds after its last datagram.  When
``max_clients`` addresses are known, a new one replaces the one heard from
least recently (a UDP client cannot say goodbye, so a full table of stale
addresses must not lock out a live one).  Device data goes to every known
client in datagrams of at most ``UDP_DATAGRAM`` (1024) bytes: that fits the
smallest IPv6 path MTU (1280) with headers, so no datagram is ever
fragmented, and a lost fragment would lose the whole datagram.  UDP promises
nothing: a datagram lost on the way is a hole in the byte stream, and two
datagrams may arrive in either order, so a client sees the device's bytes in
the wrong order.  Use UDP for data whose messages fit in one datagram and
tolerate loss (sensor readings, NMEA sentences), and TCP otherwise.  When
the device is full the share stops reading the socket; the kernel then drops
what does not fit in its receive buffer.

When the device goes away (USB unplug), every client is disconnected, new
connections are closed at once, and the share tries to reopen the device
every ``REOPEN_INTERVAL`` seconds.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import socket
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any, cast

from .device import Device, DeviceError
from .rfc2217 import (
    ComPortOption,
    Connection,
    Control,
    Data,
    Event,
    FlowControlResume,
    FlowControlSuspend,
    LineState,
    ModemState,
    NotifyLineState,
    NotifyModemState,
    PortCommand,
    ProtocolError,
    Purge,
    PurgeData,
    Role,
    SetBaudRate,
    SetControl,
    SetDataSize,
    SetLineStateMask,
    SetModemStateMask,
    SetParity,
    SetStopSize,
    Signature,
    break_control,
    dtr_control,
    flow_from_control,
    flow_in_control,
    flow_out_control,
    modem_state,
    parity_code,
    parity_from_code,
    rts_control,
    stop_code,
    stop_from_code,
)
from .serialdev import open_device
from .settings import LineSettings, Signals
from .target import join_host_port

log = logging.getLogger(__name__)

PROTOCOLS = ("rfc2217", "tcp", "udp")
SLOW_CLIENT_POLICIES = ("drop", "disconnect")
CONTROL_POLICIES = ("all", "first")

MIN_CLIENT_BUFFER = 1024
MAX_CLIENT_BUFFER = 64 * 1024 * 1024
MAX_CLIENTS = 1024

UDP_DATAGRAM = 1024  # bytes of device data per datagram (see the module docstring)
UDP_CLIENT_TTL = 60.0  # seconds a UDP client is kept after its last datagram
UDP_SEND_BACKLOG = 64 * 1024  # bytes the UDP socket may hold unsent before datagrams are dropped
# The buffers in front of each client's queue are kept small: only the
# share's queue can drop oldest-first, so that is where backlog belongs.
# asyncio's buffer holds at most this much before the queue takes over:
TRANSPORT_HIGH_WATER = 4096
# and the kernel's send buffer is fixed at this (Linux doubles it for its own
# bookkeeping) instead of auto-tuning to megabytes, which at serial speeds
# would be minutes of stale data before the slow-client policy could act.
# 64 KiB still keeps a 5 Mbit/s stream going across a 100 ms round trip.
SOCKET_SEND_BUFFER = 64 * 1024
# Answers and notifications are written even to a client whose socket is
# full; one that sends commands but never reads is closed past this much.
CONTROL_BACKLOG = 64 * 1024
REOPEN_INTERVAL = 1.0  # seconds between attempts to reopen a device that went away

_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


class ShareError(Exception):
    """A share that cannot be configured or started, with a one-line reason."""


# -- Configuration ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShareConfig:
    device: str  # "/dev/ttyUSB0" or "sim:echo"
    listen_host: str = "127.0.0.1"  # loopback unless the user names another address
    listen_port: int = 0  # 0: the kernel picks one; the bound port is Share.port
    protocol: str = "rfc2217"  # "rfc2217" | "tcp" | "udp"
    slow_client: str = "drop"  # "drop" the slow client's oldest queued data, or "disconnect" it
    client_buffer: int = 65536  # bytes queued per client before the slow-client policy acts
    control: str = "all"  # who may change settings and signals: "all" or "first"
    max_clients: int = 32  # one more is closed at once and counted

    def __post_init__(self) -> None:
        validate(self)

    @property
    def listen(self) -> str:
        return join_host_port(self.listen_host, self.listen_port)

    def to_json(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ShareConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ShareError(f"unknown share setting(s) {', '.join(unknown)}")
        if "device" not in data:
            raise ShareError("a share needs a 'device'")
        try:
            return cls(**data)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ShareError(str(exc)) from None


def validate(config: ShareConfig) -> None:
    device = config.device
    if not isinstance(device, str) or not (device.startswith("/") or device.lower().startswith("sim:")):
        raise ShareError(f"device {device!r} must be an absolute path such as /dev/ttyUSB0 or sim:echo")
    if not isinstance(config.listen_host, str) or not _valid_host(config.listen_host):
        raise ShareError(f"listen address {config.listen_host!r} is not an IP address or host name")
    _check_int("listen_port", config.listen_port, 0, 65535, "a port number between 0 and 65535")
    for name, choices in (
        ("protocol", PROTOCOLS),
        ("slow_client", SLOW_CLIENT_POLICIES),
        ("control", CONTROL_POLICIES),
    ):
        value = getattr(config, name)
        if value not in choices:
            raise ShareError(f"{name} {value!r} must be one of {', '.join(choices)}")
    _check_int(
        "client_buffer",
        config.client_buffer,
        MIN_CLIENT_BUFFER,
        MAX_CLIENT_BUFFER,
        f"a number of bytes between {MIN_CLIENT_BUFFER} and {MAX_CLIENT_BUFFER}",
    )
    _check_int("max_clients", config.max_clients, 1, MAX_CLIENTS, f"a whole number between 1 and {MAX_CLIENTS}")


def _check_int(name: str, value: object, low: int, high: int, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ShareError(f"{name} {value!r} must be {what}")


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(_HOSTNAME.match(host))
    return True


def _format_peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return join_host_port(str(peer[0]), int(peer[1]))
    return str(peer)


# -- Per-client queues ------------------------------------------------------------------


class _Outbox:
    """Device data waiting for one client; the oldest bytes leave first, also when dropped."""

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self.size = 0

    def __bool__(self) -> bool:
        return self.size > 0

    def push(self, data: bytes) -> None:
        self._chunks.append(data)
        self.size += len(data)

    def pop(self) -> bytes:
        chunk = self._chunks.popleft()
        self.size -= len(chunk)
        return chunk

    def drop_oldest(self, count: int) -> int:
        dropped = 0
        while self._chunks and dropped < count:
            chunk = self._chunks[0]
            take = min(len(chunk), count - dropped)
            if take == len(chunk):
                self._chunks.popleft()
            else:
                self._chunks[0] = chunk[take:]
            dropped += take
        self.size -= dropped
        return dropped

    def clear(self) -> None:
        self._chunks.clear()
        self.size = 0


class _Client:
    """What the share keeps about one client, whatever carries it."""

    codec: Connection | None = None

    def __init__(self, share: Share) -> None:
        self.share = share
        self.peer = "?"
        self.bytes_in = 0  # from the client, taken by the device
        self.bytes_out = 0  # device data handed to the client's socket
        self.dropped = 0  # device data discarded by the slow-client policy
        self.outbox = _Outbox()
        self.inbox: deque[Event] = deque()  # client events waiting for the device to take data
        self.suspended = False  # FLOWCONTROL-SUSPEND from the client
        self.signature: str | None = None
        self.linestate_mask = LineState(0)  # RFC 2217: "The initial LINESTATE-MASK ... is 0"
        self.modemstate_mask = ModemState(0xFF)  # RFC 2217: "The initial MODEMSTATE-MASK ... is 255"
        self.closed = False

    # What transports provide

    def deliver(self, data: bytes) -> None:
        raise NotImplementedError

    def send_command(self, command: PortCommand) -> None:
        """An RFC 2217 answer or notification; nothing for transports without telnet."""

    def pause_input(self) -> None: ...

    def resume_input(self) -> None: ...

    def close(self) -> None: ...

    @property
    def queued(self) -> int:
        return self.outbox.size

    @property
    def com_port(self) -> bool | None:
        return None

    def status(self) -> dict[str, object]:
        return {
            "peer": self.peer,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "dropped": self.dropped,
            "queued": self.queued,
            "suspended": self.suspended,
            "com_port": self.com_port,
            "signature": self.signature,
        }


class _StreamClient(_Client, asyncio.Protocol):
    """One TCP connection, raw or RFC 2217."""

    def __init__(self, share: Share, telnet: bool) -> None:
        super().__init__(share)
        self.codec = Connection(Role.SERVER) if telnet else None
        self.transport: asyncio.Transport | None = None
        self._write_paused = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = _format_peer(transport.get_extra_info("peername"))
        transport.set_write_buffer_limits(high=TRANSPORT_HIGH_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_SEND_BUFFER)
        if not self.share._admit(self):
            self.closed = True
            transport.close()
            return
        if self.codec is not None:
            transport.write(self.codec.initiate())

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self.codec is None:
            self.share._client_events(self, [Data(data)])
            return
        events = self.codec.receive_data(data)
        self._write_control(self.codec.data_to_send())
        self.share._client_events(self, events)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.share._client_left(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self.flush()

    # _Client

    @property
    def queued(self) -> int:
        buffered = self.transport.get_write_buffer_size() if self.transport is not None else 0
        return self.outbox.size + buffered

    @property
    def com_port(self) -> bool | None:
        return self.codec.com_port_enabled if self.codec is not None else None

    def deliver(self, data: bytes) -> None:
        if self._can_send() and not self.outbox:
            self._send_data(data)
        else:
            self.outbox.push(data)

    def flush(self) -> None:
        while self.outbox and self._can_send():
            self._send_data(self.outbox.pop())
        self.share._update_device_reading()

    def send_command(self, command: PortCommand) -> None:
        if self.codec is not None:
            self._write_control(self.codec.send(command))

    def pause_input(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_input(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is None or self.closed:
            return
        self.closed = True
        # A client that does not read would hold a graceful close open forever.
        if self.transport.get_write_buffer_size():
            self.transport.abort()
        else:
            self.transport.close()

    # Internals

    def _can_send(self) -> bool:
        return not (self.closed or self.suspended or self._write_paused)

    def _send_data(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(self.codec.send_data(data) if self.codec is not None else data)
        self.bytes_out += len(data)

    def _write_control(self, wire: bytes) -> None:
        if not wire or self.transport is None or self.closed:
            return
        if self.transport.get_write_buffer_size() > CONTROL_BACKLOG:
            log.warning("share %s: client %s does not read its answers; closing it", self.share.name, self.peer)
            self.closed = True
            self.transport.abort()
            return
        self.transport.write(wire)


class _UdpClient(_Client):
    """An address that sent a datagram recently."""

    def __init__(self, share: Share, endpoint: _UdpEndpoint, addr: Any, now: float) -> None:
        super().__init__(share)
        self.endpoint = endpoint
        self.addr = addr
        self.peer = _format_peer(addr)
        self.last_heard = now

    def deliver(self, data: bytes) -> None:
        transport = self.endpoint.transport
        if transport is None or self.closed:
            return
        for start in range(0, len(data), UDP_DATAGRAM):
            if transport.get_write_buffer_size() > UDP_SEND_BACKLOG:
                # The kernel would drop datagrams too; better here, counted.
                self.dropped += len(data) - start
                return
            chunk = data[start : start + UDP_DATAGRAM]
            transport.sendto(chunk, self.addr)
            self.bytes_out += len(chunk)

    def pause_input(self) -> None:
        self.endpoint.pause_reading()

    def resume_input(self) -> None:
        self.endpoint.resume_reading()

    def close(self) -> None:
        self.closed = True


class _UdpEndpoint(asyncio.DatagramProtocol):
    def __init__(self, share: Share) -> None:
        self.share = share
        self.transport: asyncio.DatagramTransport | None = None
        self._reading = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector datagram transport does not derive from DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.share._datagram(self, data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("share %s: UDP error: %s", self.share.name, exc)

    def pause_reading(self) -> None:
        # Selector datagram transports can pause (the kernel then queues, and
        # drops what does not fit); asyncio does not declare it on the ABC.
        if self._reading and self.transport is not None:
            self._reading = False
            self.transport.pause_reading()  # type: ignore[attr-defined]

    def resume_reading(self) -> None:
        if not self._reading and self.transport is not None and not self.transport.is_closing():
            self._reading = True
            self.transport.resume_reading()  # type: ignore[attr-defined]


# -- The share ------------------------------------------------------------------------------


class Share:
    """Serves one device to many clients; see the module docstring."""

    def __init__(self, config: ShareConfig, device: Device | None = None) -> None:
        self.config = config
        self.name = config.device
        self.port = 0
        self._device = device
        self._device_state = "closed"  # "open", "gone" (waiting to reopen) or "closed"
        self._device_error: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._udp: _UdpEndpoint | None = None
        self._clients: list[_Client] = []  # in order of arrival: the first one controls with control="first"
        self._orphans: list[_Client] = []  # gone clients whose data still waits for the device
        self._device_blocked = False  # a write came back short; waiting for device_writable
        self._device_paused = False  # every client is full; device.pause_reading() in force
        self._idle_settings: LineSettings | None = None  # to restore when the last client leaves
        self._dtr = False  # levels last set, for devices that cannot read them back
        self._rts = False
        self._break = False
        self._modem = ModemState(0)  # input lines last reported, for delta bits
        self._refused = 0
        self._slow_disconnects = 0
        self._closing = False
        self._reopen_timer: asyncio.TimerHandle | None = None
        self._expiry_timer: asyncio.TimerHandle | None = None

    # -- Life cycle --------------------------------------------------------------

    async def start(self) -> None:
        """Open the device and bind the listener; ShareError with a one-line reason on failure."""
        if self._loop is not None:
            raise ShareError(f"share of {self.name} already started")
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
            raise ShareError(f"cannot listen on {self.config.listen}: {_os_reason(exc)}") from None
        log.info("share %s: %s on %s", self.name, self.config.protocol, self.listen)

    async def close(self) -> None:
        """Close every client, the listener and the device."""
        if self._closing:
            return
        self._closing = True
        for timer in (self._reopen_timer, self._expiry_timer):
            if timer is not None:
                timer.cancel()
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
                lambda: _UdpEndpoint(self), local_addr=(host, port)
            )
            self._udp = endpoint
            self.port = transport.get_extra_info("sockname")[1]
            return
        telnet = self.config.protocol == "rfc2217"
        self._server = await loop.create_server(lambda: _StreamClient(self, telnet), host, port, reuse_address=True)
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
            "slow_disconnects": self._slow_disconnects,
            "slow_client": self.config.slow_client,
            "client_buffer": self.config.client_buffer,
            "control": self.config.control,
            "max_clients": self.config.max_clients,
        }

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
            self._reopen_timer = self._loop.call_later(REOPEN_INTERVAL, self._reopen)

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
        clients = [c for c in self._clients if isinstance(c, _StreamClient)]
        if not self._device_paused:
            if clients and all(c.outbox.size >= high for c in clients):
                self._device_paused = True
                self._device.pause_reading()
        elif not clients or any(c.outbox.size <= low for c in clients):
            self._device_paused = False
            self._device.resume_reading()

    def _apply_slow_policy(self, client: _Client) -> None:
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

    def _admit(self, client: _Client) -> bool:
        if self._closing or self._device_state != "open":
            self._refused += 1
            log.info("share %s: refused %s: device %s", self.name, client.peer, self._device_state)
            return False
        if len(self._clients) >= self.config.max_clients:
            self._refused += 1
            log.info("share %s: refused %s: %d clients already", self.name, client.peer, len(self._clients))
            return False
        self._clients.append(client)
        log.info("share %s: client %s connected", self.name, client.peer)
        if len(self._clients) == 1:
            self._first_client()
        if self._device_blocked:
            client.pause_input()
        return True

    def _client_left(self, client: _Client) -> None:
        if client not in self._clients:
            return
        self._clients.remove(client)
        log.info("share %s: client %s left", self.name, client.peer)
        # What it sent still goes to the device, in order; its commands are moot.
        pending = deque(event for event in client.inbox if isinstance(event, Data))
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

    def _rfc2217_clients(self) -> Iterable[_Client]:
        return [c for c in self._clients if c.codec is not None and c.com_port]

    def _may_control(self, client: _Client) -> bool:
        if self._device_state != "open":
            return False
        return self.config.control == "all" or (bool(self._clients) and self._clients[0] is client)

    # -- Client to device --------------------------------------------------------------

    def _client_events(self, client: _Client, events: Iterable[Event]) -> None:
        client.inbox.extend(events)
        if not self._device_blocked:
            self._drain_inbox(client)

    def _drain_inbox(self, client: _Client) -> bool:
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

    def _write_device(self, client: _Client, data: bytes) -> bytes:
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

    # -- RFC 2217 commands ------------------------------------------------------------

    def _command(self, client: _Client, event: Event) -> None:
        match event:
            case Signature(text=""):
                client.send_command(Signature(f"vcom {self.config.device}"))
            case Signature(text=text):
                client.signature = text
            case SetBaudRate(baud=baud):
                settings = self._change(client, baud=baud) if baud else self._settings()
                client.send_command(SetBaudRate(settings.baud))
            case SetDataSize(bits=bits):
                settings = self._change(client, data_bits=bits) if bits in (5, 6, 7, 8) else self._settings()
                client.send_command(SetDataSize(settings.data_bits))
            case SetParity(parity=code):
                parity = parity_from_code(code)
                settings = self._change(client, parity=parity) if parity else self._settings()
                client.send_command(SetParity(parity_code(settings.parity)))
            case SetStopSize(stop=code):
                stop = stop_from_code(code)
                settings = self._change(client, stop_bits=stop) if stop else self._settings()
                client.send_command(SetStopSize(stop_code(settings.stop_bits)))
            case SetControl(value=value):
                answer = self._control(client, value)
                if answer is not None:
                    client.send_command(SetControl(answer))
            case PurgeData(purge=value):
                self._purge(client, value)
            case FlowControlSuspend():
                client.suspended = True
            case FlowControlResume():
                client.suspended = False
                if isinstance(client, _StreamClient):
                    client.flush()
            case SetLineStateMask(mask=mask):
                client.linestate_mask = mask
                client.send_command(SetLineStateMask(mask))
            case SetModemStateMask(mask=mask):
                client.modemstate_mask = mask
                client.send_command(SetModemStateMask(mask))
                if mask:
                    client.send_command(NotifyModemState(self._modem & mask))
            case NotifyModemState():
                # A poll (pyserial sends an empty NOTIFY-MODEMSTATE): the current lines.
                client.send_command(NotifyModemState(self._modem & client.modemstate_mask))
            case ComPortOption(enabled=True):
                # The initial report: pyserial's client has no CTS/DSR before one arrives.
                client.send_command(NotifyModemState(self._modem & client.modemstate_mask))
            case ProtocolError(message=message):
                log.debug("share %s: from %s: %s", self.name, client.peer, message)
            case _:
                pass  # option changes, NOTIFY-LINESTATE polls: nothing to answer

    def _settings(self) -> LineSettings:
        assert self._device is not None
        return self._device.settings

    def _change(self, client: _Client, **changes: object) -> LineSettings:
        """Apply ``changes`` if this client may; the settings in force either way."""
        current = self._settings()
        if not self._may_control(client):
            return current
        try:
            wanted = current.with_(**changes)
        except ValueError:
            return current
        if wanted == current:
            return current
        try:
            return self._device.apply_settings(wanted)  # type: ignore[union-attr]
        except DeviceError as exc:
            log.warning("share %s: %s: %s", self.name, wanted.describe(), exc)
            return self._settings()

    def _control(self, client: _Client, value: int) -> Control | None:
        """SET-CONTROL (RFC 2217): apply, then the value in force to answer with."""
        flow = flow_from_control(value)
        if flow is not None:
            direction, mode = flow
            # Values 1-3 are "outbound/both"; 14-16 are inbound only.
            changes = {"flow_out": mode, "flow_in": mode} if direction == "out" else {"flow_in": mode}
            settings = self._change(client, **changes)
            return flow_out_control(settings.flow_out) if direction == "out" else flow_in_control(settings.flow_in)
        match value:
            case Control.FLOW_QUERY | Control.FLOW_DCD | Control.FLOW_DTR | Control.FLOW_DSR:
                return flow_out_control(self._settings().flow_out)
            case Control.INBOUND_FLOW_QUERY:
                return flow_in_control(self._settings().flow_in)
            case Control.BREAK_ON | Control.BREAK_OFF:
                if self._may_control(client):
                    self._break = self._device.set_break(value == Control.BREAK_ON)  # type: ignore[union-attr]
                return break_control(self._break)
            case Control.BREAK_QUERY:
                return break_control(self._break)
            case Control.DTR_ON | Control.DTR_OFF:
                if self._may_control(client):
                    self._dtr = self._set_line("dtr", value == Control.DTR_ON)
                return dtr_control(self._line("dtr"))
            case Control.DTR_QUERY:
                return dtr_control(self._line("dtr"))
            case Control.RTS_ON | Control.RTS_OFF:
                if self._may_control(client):
                    self._rts = self._set_line("rts", value == Control.RTS_ON)
                return rts_control(self._line("rts"))
            case Control.RTS_QUERY:
                return rts_control(self._line("rts"))
        log.info("share %s: %s sent unknown SET-CONTROL value %d", self.name, client.peer, value)
        return None

    def _set_line(self, name: str, on: bool) -> bool:
        device = self._device
        assert device is not None
        in_force = device.set_dtr(on) if name == "dtr" else device.set_rts(on)
        # No modem lines to read back (a pty): the level is what was last set.
        return in_force if getattr(device.signals, name) is not None else on

    def _line(self, name: str) -> bool:
        read = getattr(self._device.signals, name) if self._device is not None else None
        return read if read is not None else (self._dtr if name == "dtr" else self._rts)

    def _purge(self, client: _Client, value: int) -> None:
        receive = value in (Purge.RECEIVE, Purge.BOTH)
        transmit = value in (Purge.TRANSMIT, Purge.BOTH)
        if not (receive or transmit):
            log.info("share %s: %s sent unknown PURGE-DATA value %d", self.name, client.peer, value)
            return
        if self._may_control(client):
            self._device.purge(receive=receive, transmit=transmit)  # type: ignore[union-attr]
        if receive:
            # Asked for, so not counted as dropped.
            client.outbox.clear()
            self._update_device_reading()
        client.send_command(PurgeData(value))

    # -- UDP --------------------------------------------------------------------------

    def _datagram(self, endpoint: _UdpEndpoint, data: bytes, addr: Any) -> None:
        assert self._loop is not None
        now = self._loop.time()
        client = next((c for c in self._clients if isinstance(c, _UdpClient) and c.addr == addr), None)
        if client is None:
            if self._device_state != "open" or self._closing:
                self._refused += 1
                return
            if len(self._clients) >= self.config.max_clients:
                stalest = min(self._clients, key=lambda c: c.last_heard if isinstance(c, _UdpClient) else now)
                log.info("share %s: forgetting %s for a new UDP client", self.name, stalest.peer)
                stalest.close()
                self._client_left(stalest)
            client = _UdpClient(self, endpoint, addr, now)
            self._admit(client)
        client.last_heard = now
        self._schedule_expiry()
        if data:
            self._client_events(client, [Data(data)])

    def _schedule_expiry(self) -> None:
        """One timer, due when the least recently heard UDP client expires."""
        assert self._loop is not None
        udp = [c.last_heard for c in self._clients if isinstance(c, _UdpClient)]
        if not udp or self._closing:
            return
        due = min(udp) + UDP_CLIENT_TTL
        if self._expiry_timer is not None:
            if self._expiry_timer.when() <= due:
                return
            self._expiry_timer.cancel()
        self._expiry_timer = self._loop.call_at(due, self._expire)

    def _expire(self) -> None:
        assert self._loop is not None
        self._expiry_timer = None
        now = self._loop.time()
        for client in list(self._clients):
            if isinstance(client, _UdpClient) and client.last_heard + UDP_CLIENT_TTL <= now:
                log.info("share %s: UDP client %s expired", self.name, client.peer)
                client.close()
                self._client_left(client)
        self._schedule_expiry()


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return str(exc.strerror or exc)
    if exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc)
