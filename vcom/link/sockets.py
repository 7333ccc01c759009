"""The link's socket: connecting, tuning (keepalive, send buffer, no delay) and what the kernel can tell
about a connection (its queue, what the server acknowledged, how long it has not answered)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import struct
import sys
import termios

PEER_TIMEOUT = 15.0  # default seconds a server may leave vcom without an answer before the connection is dead
# The socket's send buffer, fixed (see tune_socket).
SOCKET_SEND_BUFFER = 64 * 1024


class TlsFailure(OSError):
    """A TLS connection that could not be made, in vcom's words (no errno)."""


async def connect_socket(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    """A connected TCP socket to ``host:port``, trying its addresses in order (as create_connection does)."""
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"cannot resolve host {host}")
    last: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    assert last is not None
    raise last


def connect_failure(exc: OSError, host: str) -> str:
    # getaddrinfo's codes are negative and os.strerror() knows none of them ("Unknown error -2").
    if isinstance(exc, socket.gaierror):
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)):
            return f"cannot resolve host {host}"
        return f"cannot resolve host {host} ({str(exc.strerror or exc).lower()})"
    # asyncio's "Connect call failed (addr)" hides the errno's own words ("Connection refused").
    if exc.errno:
        return os.strerror(exc.errno)
    return str(exc)


def socket_queue(transport: asyncio.BaseTransport) -> int:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")  # SIOCOUTQ for a socket
    except OSError:
        return 0
    return int.from_bytes(raw, sys.byteorder)


# struct tcp_info (linux/tcp.h): tcpi_retransmits and tcpi_probes (__u8: unanswered retransmissions and
# window probes in a row), tcpi_last_ack_recv (__u32, ms since the last acknowledgement), tcpi_bytes_acked
# (__u64, Linux 4.2 and later).
_TCPI_RETRANSMITS = 2
_TCPI_PROBES = 3
_TCPI_LAST_ACK_RECV = 56
_TCPI_BYTES_ACKED = 120


def _tcp_info(transport: asyncio.BaseTransport, size: int) -> bytes | None:
    """The first ``size`` bytes of the connection's struct tcp_info; None if the kernel gives fewer."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, size)
    except OSError:
        return None
    return info if len(info) >= size else None


def unanswered_for(transport: asyncio.BaseTransport) -> float | None:
    """Seconds since the server last acknowledged anything, while the kernel waits for an answer to a
    retransmission or to window probes; None while it waits for nothing (or cannot say)."""
    info = _tcp_info(transport, _TCPI_LAST_ACK_RECV + 4)
    # One unanswered window probe means little: a receiver answers out-of-window segments at most twice a
    # second (tcp_invalid_ratelimit), and probes start 0.2 s apart.  Two in a row, or a retransmission
    # (the window was open), and the server is not answering.
    if info is None or not (info[_TCPI_RETRANSMITS] or info[_TCPI_PROBES] >= 2):
        return None
    (since_ms,) = struct.unpack_from("=I", info, _TCPI_LAST_ACK_RECV)
    return since_ms / 1000


def unacknowledged(transport: asyncio.BaseTransport, handed: int) -> int:
    """Bytes of a connection that just died that the server never acknowledged: the socket's queue
    (SIOCOUTQ still counts them after the kernel gave up), or, when more, what was handed to the link
    less what the server acknowledged (tcp_info), which also covers what asyncio had not written yet
    (it empties its buffer before the protocol hears of the loss).  The second figure counts telnet
    commands as acknowledged data, so it never overstates."""
    queued = socket_queue(transport)
    info = _tcp_info(transport, _TCPI_BYTES_ACKED + 8)
    if info is None:
        return queued
    (acked,) = struct.unpack_from("=Q", info, _TCPI_BYTES_ACKED)
    return max(queued, handed - acked)


def keepalive_times(peer_timeout: float) -> tuple[int, int, int]:
    """TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT for a peer timeout: the first probe after a third of it
    of silence, then probes close enough that the last unanswered one lands at the timeout."""
    if not peer_timeout:
        return 10, 5, 3  # probes after 10 s of silence, every 5 s, 3 unanswered: within 25 s
    idle = max(1, int(peer_timeout / 3))
    interval = max(1, int(peer_timeout / 6))
    count = max(1, -(-int(peer_timeout - idle) // interval))
    return idle, interval, count


def tune_socket(transport: asyncio.BaseTransport, peer_timeout: float = PEER_TIMEOUT) -> None:
    """Low latency for interactive serial traffic, a fixed send buffer (Linux would grow it to megabytes
    (tcp_wmem) towards a server that drains at serial speed, and a program's write() would return long
    before its bytes could reach the UART), and a dead peer noticed within ``peer_timeout``:

    * keepalive probes while nothing is waiting to be sent, so a quiet connection whose server has gone
      silent (a partition, a server that lost power) ends;
    * data that stays unacknowledged is watched by the link itself (vcom.link.watch.AckWatch._check), where
      the kernel's own limit (tcp_retries2) would keep retransmitting for about a quarter of an hour."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_SEND_BUFFER)
    idle, interval, count = keepalive_times(peer_timeout)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
