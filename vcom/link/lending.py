"""Lending a link's socket to a port's express relay (:mod:`vcom.port.express`), and taking it back.

Its own module because lending is an exchange of its own between the link and the C relay: when the socket
may be lent, what the relay moved meanwhile, and how the link takes the socket back before it touches it.
A mixin of :class:`~vcom.link.link.Link` rather than an object of its own: whether the socket may be lent
depends on most of the link's state (transport, session, writability, the reading and fairness pauses), and
the link's data path checks ``_lender`` before every use of the socket, where one more indirection costs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from .session import RawSession, Session

if TYPE_CHECKING:
    from .handshake import LinkTls
    from .state import LinkStats
    from .watch import AckWatch


class SocketLending:
    """The link's side of lending its socket to a port's express relay."""

    # The link's state that lending reads and changes (see Link.__init__).
    stats: LinkStats
    _transport: asyncio.Transport | None
    _session: Session | None
    _datagrams: bool
    _tls: LinkTls | None
    _writable: bool
    _reading_paused: bool
    _throttle: asyncio.TimerHandle | None
    _acks: AckWatch
    _lender: Callable[[], None] | None

    if TYPE_CHECKING:
        def _received(self, data: bytes, read_started: float | None = None) -> None: ...

        def _resume_transport(self) -> None: ...

    def lend_socket(self, reclaim: Callable[[], None]) -> tuple[int, bool] | None:
        """The socket's descriptor and whether its data is IAC-escaped (RFC 2217), for a relay that moves
        data in both directions without the loop; None unless the connection is a plain TCP socket in its
        steady state (negotiated, writable, reading, nothing queued in the link, the session between
        commands: see ``Session.relayable``).  Until ``give_back``, the loop does not read it, and
        ``reclaim`` is called before anything here touches it."""
        transport, session = self._transport, self._session
        if (transport is None or session is None or self._datagrams or self._tls is not None
                or not self._writable or self._reading_paused or self._throttle is not None
                or self._lender is not None or transport.get_write_buffer_size() or not session.relayable
                or transport.is_closing()):
            return None
        sock = transport.get_extra_info("socket")
        if sock is None:
            return None
        transport.pause_reading()
        self._lender = reclaim
        self.watch_acks()  # for what is in flight now; the relay's own sends are watched through watch_acks
        return sock.fileno(), type(session) is not RawSession

    def give_back(self, unsent: bytes, sent: int, received: int) -> None:
        """The relay has stopped: count what it moved, queue what the socket had not taken yet (encoded
        already), and read again unless something asked for a pause meanwhile."""
        self._lender = None
        self.stats.bytes_to_remote += sent
        self.stats.bytes_from_remote += received
        transport = self._transport
        if transport is None:
            return
        if unsent:
            transport.write(unsent)
        if unsent or sent:
            self.watch_acks()  # what the relay sent may still be unacknowledged
        if not self._reading_paused and self._throttle is None:
            self._resume_transport()

    def watch_acks(self) -> None:
        """Data went to the server (written here, or by the relay that has the socket): watch for its
        acknowledgement (the peer timeout; ``AckWatch._check`` only reads the socket's state, and takes the
        socket back before it aborts)."""
        self._acks.watch()

    def received_by_relay(self, data: bytes) -> None:
        """What the relay received from a telnet command on: the session takes it from here."""
        self._received(data)

    def _reclaim(self) -> None:
        reclaim = self._lender
        if reclaim is not None:
            reclaim()
        self._lender = None
