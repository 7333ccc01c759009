"""Express: a busy port's bytes moved in C, off the event loop.

Python costs a port a few microseconds per chunk and per wake-up; for a port that moves data all the time
(a firmware upload, a stream at 1 Mbaud, a program polling its device as fast as it answers) that is most
of the manager's work and of each round trip.  When a port is hot, the loop lends its pty master and its
socket to ``vcom._relay.relay`` (socat's loop in C: both directions, one poll, the GIL released), run by a
small pool of threads, and takes them back as soon as anything needs Python:

* the relay returns by itself on a pty status byte (a termios change or a flush: handled in order with the
  data), on a telnet command from the server (the session decodes it), on the slave's close, on the
  socket's EOF or error (asyncio reads them again and acts as always), and after a quiet second;
* the loop takes it back (an eventfd wakes the relay, which returns within microseconds: every descriptor
  is non-blocking) before anything else touches the socket or the pty: the link calls the port's
  ``reclaim`` before each write, pause, resume or close, and the port before its own uses.

What the relay had read and not yet passed on comes back with it and goes first.  Only a plain TCP link
(raw or RFC 2217) in its steady state, a port open by one program, without --emulate-baud, monitors or
split members, is lent.  Without the C extension ports never go express.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import struct
from dataclasses import dataclass

try:
    from .. import _relay
except ImportError:  # built without a C compiler: every port stays on the loop
    _relay = None  # type: ignore[assignment]

AVAILABLE = _relay is not None
# Wake-ups within HOT_WINDOW seconds that make a port hot.  VCOM_EXPRESS_HOT=1 makes every eligible port go
# express at its first chunk (the test suite runs that way too); 0 turns express off.
HOT_EVENTS = int(os.environ.get("VCOM_EXPRESS_HOT", "48"))
HOT_WINDOW = 0.05
# A relay that moved this much before a command or a status byte made it return leaves its port hot.
BUSY_RUN = 16 * 1024
# How long a relay waits with nothing moving before it hands the port back to the loop (milliseconds).
IDLE_MS = 1000
# At most this many ports go express at once: each holds a thread while it runs.
MAX_RELAYS = max(2, min(8, os.cpu_count() or 2))

_pool: concurrent.futures.ThreadPoolExecutor | None = None
_running = 0


@dataclass(slots=True)
class Outcome:
    """What a relay hands back: why it stopped, and the bytes it holds in each direction."""

    reason: int
    unsent: bytes  # read from the pty, encoded, not yet taken by the socket
    undelivered: bytes  # received and decoded, not yet taken by the pty
    extra: bytes  # a pty status read (STATUS), or received bytes from a telnet command on (COMMAND)
    error: int
    carried: bytes  # an IAC that ended the last receive, its pair still to come (goes after ``undelivered``)
    sent: int  # data bytes read from the pty
    received: int  # data bytes received (decoded)

    @property
    def status_read(self) -> bool:
        return self.reason == _relay.STATUS

    @property
    def command(self) -> bool:
        return self.reason == _relay.COMMAND

    @property
    def failed(self) -> bool:
        """poll() itself failed (``error`` is its errno); a socket's error is left for asyncio to report."""
        return self.reason == _relay.FAILED


class Relay:
    """One express run of one port: started on the loop, stopped by the relay itself or by ``stop``."""

    def __init__(self, master: int, sock: int, iac: bool) -> None:
        global _pool, _running
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(MAX_RELAYS, thread_name_prefix="vcom-express")
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._counters = bytearray(16)
        try:
            self.future = _pool.submit(_relay.relay, master, sock, self._wake, iac, IDLE_MS, self._counters)
        except RuntimeError:
            os.close(self._wake)
            raise
        _running += 1
        self.done = False

    def counts(self) -> tuple[int, int]:
        """Data bytes moved so far (to the remote, from it): read while it runs, for status."""
        sent, received = struct.unpack_from("QQ", self._counters)
        return sent, received

    def stop(self) -> Outcome:
        """Make it return, wait for that (microseconds), and take what it hands back."""
        with contextlib.suppress(OSError):
            os.eventfd_write(self._wake, 1)
        return self.outcome()

    def outcome(self) -> Outcome:
        global _running
        reason, unsent, undelivered, extra, error, carried = self.future.result()
        if not self.done:
            self.done = True
            _running -= 1
            os.close(self._wake)
        sent, received = self.counts()
        return Outcome(reason, unsent, undelivered, extra, error, carried, sent, received)


def room() -> bool:
    """Whether another port may go express now."""
    return AVAILABLE and HOT_EVENTS > 0 and _running < MAX_RELAYS
