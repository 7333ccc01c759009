"""systemd's service protocol (sd_notify(3), sd_listen_fds(3)), without a dependency.

The manager speaks it to whoever runs it: systemd itself (``NOTIFY_SOCKET``),
or vcom's own keeper (:mod:`vcom.keeper`, which hands the manager one end of
a socket pair in ``VCOM_KEEPER_FD``).  What it says:

* ``READY=1`` once every configured port exists, ``STATUS=``, ``STOPPING=1``;
* ``WATCHDOG=1`` from the event loop, while ``WATCHDOG_USEC`` asks for it, so
  that a loop that stalls is noticed and the manager replaced;
* ``FDSTORE=1`` with ``FDNAME=`` and the descriptor itself (SCM_RIGHTS): the
  pty masters, so that a new manager takes the ports back with the programs'
  descriptors still open (``FDSTOREREMOVE=1`` when a port is removed).

A new manager finds what was stored in ``LISTEN_FDS``/``LISTEN_FDNAMES``
(descriptors from 3 on, for ``LISTEN_PID``).  Outside systemd and the keeper
nothing is sent and nothing is found.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Sequence

LISTEN_FDS_START = 3
FDNAME_MAX = 255


class Notifier:
    """Where this process's service manager listens, if anywhere."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._keeper: socket.socket | None = None
        self._address: str | None = None
        keeper_fd = env.get("VCOM_KEEPER_FD", "")
        if keeper_fd.isdigit():
            with contextlib.suppress(OSError):
                self._keeper = socket.socket(fileno=int(keeper_fd))
                os.set_inheritable(self._keeper.fileno(), False)
        elif env.get("NOTIFY_SOCKET"):
            address = env["NOTIFY_SOCKET"]
            self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        wanted = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        self.watchdog_interval: float | None = int(usec) / 1e6 if wanted else None

    @property
    def present(self) -> bool:
        return self._keeper is not None or self._address is not None

    @property
    def keeps_descriptors(self) -> bool:
        """Whether stored descriptors outlive this process (a keeper, or systemd with a store)."""
        return self._keeper is not None or (self._address is not None and _store_configured())

    def notify(self, state: str, fds: Sequence[int] = ()) -> bool:
        """Send ``state`` (``"READY=1"``, ``"FDSTORE=1\\nFDNAME=x"``...) with ``fds``; False if nobody listens."""
        data = state.encode()
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _fd_array(fds))] if fds else []
        try:
            if self._keeper is not None:
                self._keeper.sendmsg([data], ancillary)
                return True
            if self._address is None:
                return False
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendmsg([data], ancillary, 0, self._address)
            return True
        except OSError:
            return False

    def store(self, name: str, fd: int) -> bool:
        return self.notify(f"FDSTORE=1\nFDNAME={name}", [fd])

    def forget(self, name: str) -> bool:
        return self.notify(f"FDSTOREREMOVE=1\nFDNAME={name}")


def notify(state: str) -> bool:
    """One message to this process's service manager, if it has one."""
    return Notifier().notify(state)


def listen_fds(environ: dict[str, str] | None = None, *, unset: bool = True) -> dict[str, list[int]]:
    """The descriptors passed to this process by name (``LISTEN_FDNAMES``; unnamed ones as "unknown").
    With ``unset`` the variables are removed, so that processes started later do not see them."""
    env = os.environ if environ is None else environ
    try:
        if int(env.get("LISTEN_PID", "0")) != os.getpid():
            return {}
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return {}
    names = env.get("LISTEN_FDNAMES", "").split(":") if env.get("LISTEN_FDNAMES") else []
    found: dict[str, list[int]] = {}
    for index in range(count):
        fd = LISTEN_FDS_START + index
        os.set_inheritable(fd, False)
        found.setdefault(names[index] if index < len(names) else "unknown", []).append(fd)
    if unset and environ is None:
        for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(key, None)
    return found


def fd_name(kind: str, key: str) -> str:
    """A valid FDNAME (printable ASCII, no ':', at most 255 characters) that says what the fd is."""
    name = f"{kind}={key}"
    if len(name) <= FDNAME_MAX and name.isprintable() and name.isascii() and ":" not in name:
        return name
    import hashlib

    return f"{kind}#{hashlib.sha256(key.encode()).hexdigest()}"


def _fd_array(fds: Sequence[int]) -> bytes:
    import array

    return array.array("i", fds).tobytes()


def _store_configured() -> bool:
    # systemd tells a service the size of its store (FDSTORE=, the unit's FileDescriptorStoreMax=) since
    # v254; without that a manager run by systemd directly does not count on one.  vcom's unit runs the
    # keeper, which stores in systemd itself.
    value = os.environ.get("FDSTORE", "")
    return value.isdigit() and int(value) > 0
