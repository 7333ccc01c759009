"""What a TCP connection to a share meets before it is a client: the ``--allow`` list, then (for a TLS
share) the handshake, bounded by ``limits.TLS_HANDSHAKE_TIMEOUT``.

Only a connection that passed both becomes a :class:`StreamClient`, so the device never hears a byte
from a peer that was refused and no device byte goes to one: the share does not know it exists.
A refusal is counted and told in one line (status ``last_refusal`` and the log); the listener and
every other client carry on.

The handshake runs as ``loop.start_tls`` on the accepted connection rather than as ``create_server(ssl=)``:
asyncio drops a failed server-side handshake silently there, and the failure is what the user needs to
see.  Bytes that arrive together with the end of the handshake (a client that speaks at once) are held
by a :class:`_Held` protocol and handed to the client in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import TYPE_CHECKING, Any

from ..tls import handshake_failure
from . import limits
from .clients import StreamClient

if TYPE_CHECKING:
    from .server import Share

log = logging.getLogger(__name__)


class Gate(asyncio.Protocol):
    """The protocol of every accepted TCP connection until it is handed to its client."""

    def __init__(self, share: Share, telnet: bool) -> None:
        self.share = share
        self.telnet = telnet

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        share = self.share
        peer = transport.get_extra_info("peername")
        if not share.access.allows(peer):
            transport.abort()
            share.refuse(peer, "not in --allow", denied=True)
            return
        context = share.tls_context
        if context is None:
            client = StreamClient(share, self.telnet)
            transport.set_protocol(client)
            client.connection_made(transport)  # before the first read: nothing can arrive ahead of it
            return
        if len(share.handshakes) >= max(limits.TLS_PENDING_HANDSHAKES, share.config.max_clients):
            transport.abort()
            share.refuse(peer, "too many TLS handshakes at once")
            return
        task = asyncio.get_running_loop().create_task(self._handshake(transport, context, peer))
        share.handshakes.add(task)
        task.add_done_callback(share.handshakes.discard)

    def data_received(self, data: bytes) -> None:
        pass  # the transport is handed over before its first read

    def connection_lost(self, exc: Exception | None) -> None:
        pass

    async def _handshake(self, transport: asyncio.Transport, context: ssl.SSLContext, peer: Any) -> None:
        loop = asyncio.get_running_loop()
        held = _Held()
        timeout = limits.TLS_HANDSHAKE_TIMEOUT
        try:
            async with asyncio.timeout(timeout):
                # asyncio's own bound is a backstop: ours comes first and is a TimeoutError.
                secure = await loop.start_tls(transport, held, context, server_side=True,
                                              ssl_handshake_timeout=timeout + 1)
        except asyncio.CancelledError:
            transport.abort()
            raise
        except (OSError, EOFError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            transport.abort()
            self.share.refuse(peer, "TLS: " + handshake_failure(exc, "client", timeout=timeout))
            return
        if secure is None or self.share.closing:
            with contextlib.suppress(Exception):
                (secure or transport).abort()
            return
        client = StreamClient(self.share, self.telnet)
        client.tls = secure.get_extra_info("ssl_object")
        held.hand_over(secure, client)


class _Held(asyncio.Protocol):
    """Holds what arrives between the end of the handshake and the client taking the connection."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._lost: list[Exception | None] = []

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost.append(exc)

    def hand_over(self, transport: asyncio.Transport, client: StreamClient) -> None:
        transport.set_protocol(client)
        client.connection_made(transport)
        for chunk in self._chunks:
            client.data_received(chunk)
        self._chunks.clear()
        if self._lost:
            client.connection_lost(self._lost[0])
