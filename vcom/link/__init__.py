"""The network half of a port: one connection to a remote serial port, kept alive.

``state`` holds what a link is and reports (plain data), ``session`` what goes on the wire per
transport (no I/O), ``sockets`` the socket and what the kernel says about it, and ``link`` the
:class:`Link` that ties them to the event loop.  Everything the rest of vcom uses is here.
"""

from ..settings import FlowControl
from .link import DATAGRAM_SIZE, RECEIVE_MAX, Link
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
