"""TLS on a link: the handshake on a connected socket, and what its outcome says about a connection's end.

Its own module because TLS keeps state of its own across a connection (when the handshake happened, what
had arrived by then, the timer that holds raw data back after it) that only a TLS link has, and its
messages (a refused certificate, a server that hangs up right after the handshake) are a subject of their
own; the link asks it to open the connection and what a loss means, and otherwise only whether it has one.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

from ..config import ConfigError
from ..target import Target, Transport
from ..tls import ClientSide, ClientTls, handshake_failure
from .sockets import TlsFailure, connect_socket

log = logging.getLogger("vcom.link")


class LinkTls:
    """One link's TLS: its client side (certificates, what the last handshake was) and the handshake's
    timing."""

    def __init__(self, target: Target, name: str, handshake_timeout: float) -> None:
        self.target = target
        self.name = name
        self.side = ClientSide(target.tls_options or ClientTls(), target.host, name)
        self.handshake_timeout = handshake_timeout
        self.settle: asyncio.TimerHandle | None = None
        self.handshake_at = 0.0  # loop time of the last connect attempt, then of its completed handshake
        self.bytes_at_handshake = 0

    async def open(self, loop: asyncio.AbstractEventLoop, protocol: Callable[[], Any]) -> tuple[Any, Any]:
        """TCP, then the handshake on that socket: each has its own bound and its own message.  The protocol
        sees the connection only once the server's certificate is verified, so nothing is sent before."""
        tls = self.side
        try:
            context = tls.context()
        except ConfigError as exc:
            raise TlsFailure(f"TLS files: {exc}") from None
        self.handshake_at = loop.time()
        sock = await connect_socket(loop, self.target.host, self.target.port)
        timeout = self.handshake_timeout
        try:
            async with asyncio.timeout(timeout):
                # asyncio's own handshake bound is a backstop: ours comes first and is a TimeoutError.
                return await loop.create_connection(
                    protocol, sock=sock, ssl=context, server_hostname=tls.server_name,
                    ssl_handshake_timeout=timeout + 1)
        except (OSError, EOFError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            sock.close()
            raise TlsFailure("TLS: " + handshake_failure(exc, "server", server_name=tls.server_name, timeout=timeout,
                                                         presented_cert=bool(tls.options.cert))) from None

    def connected(self, transport: Any, current: Callable[[], bool], received: int) -> float | None:
        """Note the handshake (``received``: the link's bytes from the server so far); the seconds raw data
        must wait before it may flow (None: it need not).

        TLS 1.3 lets the client finish its handshake before the server has checked the client: a server
        that refuses our certificate (or our lack of one) says so one round trip later.  RFC 2217 data
        waits for the server's negotiation anyway; raw TCP has no such answer, so its first bytes wait for
        either the server's first bytes or twice the time the connect and handshake took (at least 50 ms,
        at most 2 s), rather than be lost to a server that is about to close."""
        if self.settle is not None:
            self.settle.cancel()
            self.settle = None
        ssl_object = transport.get_extra_info("ssl_object")
        session = self.side.connected(ssl_object, current)
        loop = asyncio.get_running_loop()
        took, self.handshake_at = loop.time() - self.handshake_at, loop.time()
        self.bytes_at_handshake = received
        log.info("%s: TLS %s %s with %s", self.name, session.version, session.cipher,
                 session.peer.subject if session.peer else "a server without certificate")
        if self.target.transport is not Transport.TCP or session.version != "TLSv1.3":
            return None
        return min(max(2 * took, 0.05), 2.0)

    def loss_detail(self, exc: Exception | None, com_port: bool | None, received: int) -> str | None:
        """What TLS says about why a connection ended, as the end of a sentence (None: nothing; ``com_port``
        and ``received``: what the server had answered and sent): what a handshake failure means, or that
        the server closed at once after the handshake."""
        if isinstance(exc, ssl.SSLError):
            return ": " + handshake_failure(exc, "server", server_name=self.side.server_name,
                                            presented_cert=bool(self.side.options.cert))
        if exc is not None:
            return None
        recent = asyncio.get_running_loop().time() - self.handshake_at < 2.0
        silent = com_port is None and received == self.bytes_at_handshake
        if recent and silent:
            doubt = ("it may not accept our client certificate" if self.side.options.cert
                     else "it may require a client certificate (--tls-cert, --tls-key)")
            return f": closed by the server right after the TLS handshake; {doubt}"
        return None
