"""The sizes and times that bound what a share holds per client and how it waits.

Read as ``limits.NAME`` at the point of use, so a test can shorten a time.
"""

UDP_DATAGRAM = 1024  # bytes of device data per datagram (see the module docstring)
UDP_CLIENT_TTL = 60.0  # seconds a UDP client is kept after its last datagram
UDP_SEND_BACKLOG = 64 * 1024  # bytes the UDP socket may hold unsent before datagrams are dropped
# The buffers in front of each client's queue are kept small: only the
# share's queue can drop oldest-first, so that is where backlog belongs.
# asyncio's buffer holds at most this much before the queue takes over:
TRANSPORT_HIGH_WATER = 4096
# and the kernel's send buffer is fixed at this (Linux doubles it for its own
# bookkeeping) instead of auto-tuning to megabytes, which at serial speeds
# would be minutes of stale data before the slow-client policy could act.
# 64 KiB still keeps a 5 Mbit/s stream going across a 100 ms round trip.
SOCKET_SEND_BUFFER = 64 * 1024
# Answers and notifications are written even to a client whose socket is
# full; one that sends commands but never reads is closed past this much.
CONTROL_BACKLOG = 64 * 1024
REOPEN_INTERVAL = 1.0  # seconds between attempts to reopen a device that went away
TLS_HANDSHAKE_TIMEOUT = 10.0  # seconds a client may take to finish its TLS handshake
# Connections that may be in their TLS handshake at once (or max_clients, if larger): beyond that a new
# one is closed at once, so that silent connections cannot pile up.
TLS_PENDING_HANDSHAKES = 64
REFUSAL_LOG_INTERVAL = 60.0  # seconds before the same refusal of the same peer is logged again
# Keepalive on client sockets (idle, interval, count): a client that vanished is found within 25 s.
KEEPALIVE = (10, 5, 3)
