"""The asyncio protocols of a link: what the event loop calls when a connection is made, delivers bytes,
fills up or goes, each handed on to the :class:`~vcom.link.link.Link` at once.

Their own module because they are the event loop's side of the link (the loop constructs them and decides
when they run), while :mod:`vcom.link.link` decides what a connection does; stream reads go into the one
buffer of :mod:`vcom.link.fairness`, sized by the link's share.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from .fairness import RECEIVE_BUFFER

if TYPE_CHECKING:
    from .link import Link


class LinkProtocol:
    """What both transports' protocols share: hand everything to the link."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._link._connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        # The socket is still open here (asyncio closes it after this call): what it held unacknowledged
        # can still be read.
        self._link._connection_lost()
        if not self.lost.done():
            self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self._link._socket_writable(False)

    def resume_writing(self) -> None:
        self._link._socket_writable(True)


class StreamProtocol(LinkProtocol, asyncio.BufferedProtocol):
    """Reads into one buffer shared by every link, as much as the link's budget allows: asyncio's own
    reads would allocate 256 KiB for each, even for one byte.  The loop runs one callback at a time and
    each read is handed on (copied) before the next, so one buffer serves all."""

    def get_buffer(self, sizehint: int) -> memoryview:
        link = self._link
        link._read_started = time.perf_counter()  # the read itself may count against the link's share
        return link._share.view

    def buffer_updated(self, nbytes: int) -> None:
        link = self._link
        link._received(bytes(RECEIVE_BUFFER[:nbytes]), link._read_started)


class DatagramProtocol(LinkProtocol, asyncio.DatagramProtocol):
    """UDP: a "connection" is a connected datagram socket; it is only lost when we close it."""

    def datagram_received(self, data: bytes, addr: object) -> None:
        self._link._received(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the peer may come back; datagrams are not retried.
        self._link._error(f"{self._link.target}: {getattr(exc, 'strerror', None) or exc}")
