"""What a share keeps about one client (its queue, counters and RFC 2217 masks), and the TCP client
(raw or RFC 2217) as an asyncio protocol."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ..link.sockets import socket_queue, unacknowledged
from ..rfc2217 import (
    Connection,
    Data,
    Event,
    LineState,
    ModemState,
    PortCommand,
    Role,
)
from ..target import join_host_port
from . import limits

if TYPE_CHECKING:
    from .server import Share

log = logging.getLogger(__name__)


def format_peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return join_host_port(str(peer[0]), int(peer[1]))
    return str(peer)


# -- Per-client queues ------------------------------------------------------------------


class Outbox:
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


class Client:
    """What the share keeps about one client, whatever carries it."""

    codec: Connection | None = None
    tls: Any = None  # the ssl.SSLObject of a TLS client

    def __init__(self, share: Share) -> None:
        self.share = share
        self.peer = "?"
        self.address = "?"  # the peer's host, for the per-address limit
        self.last_active = time.monotonic()  # last byte from the client, or handed to its socket
        self.lost = 0  # device data it never acknowledged when it left (its queue, its socket's)
        self.bytes_in = 0  # from the client, taken by the device
        self.bytes_out = 0  # device data handed to the client's socket
        self.dropped = 0  # device data discarded by the slow-client policy
        self.outbox = Outbox()
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
            "tls": _tls_status(self.tls) if self.tls is not None else None,
        }


def _tls_status(ssl_object: Any) -> dict[str, object]:
    from ..tls import Session

    return Session.of(ssl_object).to_json()


class StreamClient(Client, asyncio.Protocol):
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
        peername = transport.get_extra_info("peername")
        self.peer = format_peer(peername)
        self.address = str(peername[0]) if isinstance(peername, tuple) and peername else self.peer
        transport.set_write_buffer_limits(high=limits.TRANSPORT_HIGH_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, limits.SOCKET_SEND_BUFFER)
            _keepalive(sock)
        if not self.share._admit(self):
            self.closed = True
            transport.close()
            return
        if self.codec is not None:
            transport.write(self.codec.initiate())

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_active = time.monotonic()
        if self.codec is None:
            self.share._client_events(self, [Data(data)])
            return
        events = self.codec.receive_data(data)
        self._write_control(self.codec.data_to_send())
        self.share._client_events(self, events)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed and self.transport is not None:
            # Its socket is still open here: what it holds unacknowledged is lost with the client.  After a
            # reset the kernel has already dropped its queue, so what was handed to the socket less what
            # the client acknowledged (tcp_info) counts too.
            self.lost = self.outbox.size + unacknowledged(self.transport, self.bytes_out)
        self.closed = True
        self.share._client_left(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self.flush()

    # Client

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
        self.lost = self.outbox.size + self.transport.get_write_buffer_size() + socket_queue(self.transport)
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
        self.last_active = time.monotonic()

    def _write_control(self, wire: bytes) -> None:
        if not wire or self.transport is None or self.closed:
            return
        if self.transport.get_write_buffer_size() > limits.CONTROL_BACKLOG:
            log.warning("share %s: client %s does not read its answers; closing it", self.share.name, self.peer)
            self.closed = True
            self.transport.abort()
            return
        self.transport.write(wire)


def _keepalive(sock: socket.socket) -> None:
    """A client that vanished without a word (power cut, cable pulled, a NAT that forgot it) would hold
    its place for ever: keepalive probes find it (limits.KEEPALIVE: within about 25 s of silence)."""
    idle, interval, count = limits.KEEPALIVE
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)


