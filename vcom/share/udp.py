"""UDP: one socket; a client is an address heard from recently (see the package docstring)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

from ..access import AllowList
from ..rfc2217 import Data
from . import limits
from .clients import Client, format_peer

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ..config import ShareConfig
    from ..rfc2217 import Event
    from .server import Share

log = logging.getLogger(__name__)


class UdpClient(Client):
    """An address that sent a datagram recently."""

    def __init__(self, share: Share, endpoint: UdpEndpoint, addr: Any, now: float) -> None:
        super().__init__(share)
        self.endpoint = endpoint
        self.addr = addr
        self.peer = format_peer(addr)
        self.last_heard = now

    def deliver(self, data: bytes) -> None:
        transport = self.endpoint.transport
        if transport is None or self.closed:
            return
        for start in range(0, len(data), limits.UDP_DATAGRAM):
            if transport.get_write_buffer_size() > limits.UDP_SEND_BACKLOG:  # type: ignore[attr-defined]
                # The kernel would drop datagrams too; better here, counted.  (The selector transport has
                # get_write_buffer_size; asyncio does not declare it on the ABC.)
                self.dropped += len(data) - start
                return
            chunk = data[start : start + limits.UDP_DATAGRAM]
            transport.sendto(chunk, self.addr)
            self.bytes_out += len(chunk)

    def pause_input(self) -> None:
        self.endpoint.pause_reading()

    def resume_input(self) -> None:
        self.endpoint.resume_reading()

    def close(self) -> None:
        self.closed = True


class UdpEndpoint(asyncio.DatagramProtocol):
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


class UdpClientTable:
    """The share's part that knows UDP clients by address and forgets the silent ones
    (a mixin of :class:`vcom.share.server.Share`, whose state it uses)."""

    name: str
    config: ShareConfig
    _loop: asyncio.AbstractEventLoop | None
    _clients: list[Client]
    _expiry_timer: asyncio.TimerHandle | None
    _device_state: str
    _closing: bool
    _refused: int
    access: AllowList

    def refuse(self, peer: object, reason: str, *, denied: bool = False) -> None: ...

    if TYPE_CHECKING:  # the share's, used here
        def _admit(self, client: Client) -> bool: ...

        def _client_left(self, client: Client) -> None: ...

        def _client_events(self, client: Client, events: Iterable[Event]) -> None: ...

    def _datagram(self, endpoint: UdpEndpoint, data: bytes, addr: Any) -> None:
        assert self._loop is not None
        now = self._loop.time()
        client = next((c for c in self._clients if isinstance(c, UdpClient) and c.addr == addr), None)
        if client is None:
            if not self.access.allows(addr):
                self.refuse(addr, "not in --allow", denied=True)
                return
            if self._device_state != "open" or self._closing:
                self._refused += 1
                return
            if len(self._clients) >= self.config.max_clients:
                stalest = min(self._clients, key=lambda c: c.last_heard if isinstance(c, UdpClient) else now)
                log.info("share %s: forgetting %s for a new UDP client", self.name, stalest.peer)
                stalest.close()
                self._client_left(stalest)
            client = UdpClient(cast("Share", self), endpoint, addr, now)  # a mixin of Share's, never alone
            self._admit(client)
        client.last_heard = now
        self._schedule_expiry()
        if data:
            self._client_events(client, [Data(data)])

    def _schedule_expiry(self) -> None:
        """One timer, due when the least recently heard UDP client expires."""
        assert self._loop is not None
        udp = [c.last_heard for c in self._clients if isinstance(c, UdpClient)]
        if not udp or self._closing:
            return
        due = min(udp) + limits.UDP_CLIENT_TTL
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
            if isinstance(client, UdpClient) and client.last_heard + limits.UDP_CLIENT_TTL <= now:
                log.info("share %s: UDP client %s expired", self.name, client.peer)
                client.close()
                self._client_left(client)
        self._schedule_expiry()
