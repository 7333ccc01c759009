"""systemd's readiness protocol (sd_notify(3)), without a dependency.

``Type=notify`` units start the manager with ``NOTIFY_SOCKET`` set; one
datagram ``READY=1`` tells systemd that every configured port exists, so
units ordered after vcom.service find their devices.  Outside systemd the
variable is unset and this does nothing.
"""

from __future__ import annotations

import contextlib
import os
import socket


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``); False when not run by systemd or the send failed."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(state.encode())
        return True
    return False
