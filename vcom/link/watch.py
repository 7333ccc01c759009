"""The peer-timeout watch: tell a dead server from a slow one while data waits for its acknowledgement.

Its own module because it is a small timer with few inputs (the peer timeout, the link's transport, what
to do with a dead connection) that reads only what the kernel says about the socket (tcp_info,
:mod:`vcom.link.sockets`); the link arms it whenever data goes to the server and cancels it with the
connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .sockets import socket_queue, unanswered_for

# While data waits for the server's acknowledgement the link looks this often (at most) whether the server
# still answers (see AckWatch._check).
ACK_CHECK_INTERVAL = 3.0


class AckWatch:
    """One link's watch on its connection's acknowledgements (the peer timeout)."""

    def __init__(
        self,
        peer_timeout: float,
        transport: Callable[[], asyncio.Transport | None],
        dead: Callable[[asyncio.Transport], None],
    ) -> None:
        self.peer_timeout = peer_timeout  # 0: the kernel's own limits (minutes)
        self._transport = transport  # the link's connection now, if any
        self._dead = dead  # gives up on a connection (takes the socket back from a relay, aborts it)
        self._timer: asyncio.TimerHandle | None = None

    def watch(self) -> None:
        """Data went to the server: watch for its acknowledgement, unless the watch is on already."""
        if self._timer is None and self.peer_timeout and self._transport() is not None:
            self._arm()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        interval = min(ACK_CHECK_INTERVAL, max(self.peer_timeout / 4, 0.25))
        self._timer = asyncio.get_running_loop().call_later(interval, self._check)

    def _check(self) -> None:
        """A dead server with data on its way: abort after ``peer_timeout`` without an acknowledgement.

        TCP_USER_TIMEOUT would do this in the kernel, but Linux applies it to a closed receive window too,
        so a live server that takes nothing for a while (its UART held off by flow control: a printer out
        of paper) would be cut off and what it had not taken lost.  Here a connection counts as dead only
        while the kernel is retransmitting or its window probes go unanswered (tcp_info's retransmits and
        probes) and the last acknowledgement is older than the peer timeout.  A server that answers its
        window probes is alive however long it keeps the window shut; one that dies while it does is
        noticed at its second unanswered probe (the kernel spaces them up to 2 minutes apart).  Nothing in
        flight: keepalive watches a quiet connection."""
        self._timer = None
        transport = self._transport()
        if transport is None or not self.peer_timeout:
            return
        if not transport.get_write_buffer_size() and not socket_queue(transport):
            return
        silence = unanswered_for(transport)
        if silence is not None and silence >= self.peer_timeout:
            self._dead(transport)
            return
        self._arm()
