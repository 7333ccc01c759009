"""The network half of a port: one connection to a remote serial port, kept alive.

``state`` holds what a link is and reports (plain data), ``session`` what goes on the wire per
transport (no I/O), ``sockets`` the socket and what the kernel says about it, and ``link`` the
:class:`Link` that ties them to the event loop, with parts of its own: ``protocols`` (the asyncio
protocols that hand the loop's events to it), ``fairness`` (each connection's share of the loop),
``watch`` (the peer-timeout watch), ``handshake`` (TLS on a link) and ``lending`` (the socket lent to a
port's express relay).  Everything the rest of vcom uses is here.
"""

from ..settings import FlowControl
from .fairness import RECEIVE_MAX
from .link import DATAGRAM_SIZE, Link
from .session import CONTROL_BACKLOG, PURGE_ANSWER_TIMEOUT, RawSession, Rfc2217Session, Session
from .sockets import PEER_TIMEOUT, SOCKET_SEND_BUFFER, TlsFailure, connect_failure, keepalive_times
from .state import (
    LINESTATE_MASK,
    MODEMSTATE_MASK,
    Backoff,
    Lines,
    LinkListener,
    LinkState,
    LinkStats,
    RemoteState,
)

__all__ = [
    "CONTROL_BACKLOG", "DATAGRAM_SIZE", "LINESTATE_MASK", "MODEMSTATE_MASK", "PEER_TIMEOUT", "PURGE_ANSWER_TIMEOUT",
    "RECEIVE_MAX", "SOCKET_SEND_BUFFER", "Backoff", "FlowControl", "Lines", "Link", "LinkListener", "LinkState",
    "LinkStats", "RawSession", "RemoteState", "Rfc2217Session", "Session", "TlsFailure", "connect_failure",
    "keepalive_times",
]
