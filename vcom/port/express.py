"""Express: a busy port's bytes moved in C, off the event loop.

Python costs a port a few microseconds per chunk and per wake-up; for a port that moves data all the time
(a firmware upload, a stream at 1 Mbaud, a program polling its device as fast as it answers) that is most
of the manager's work and of each round trip.  When a port is hot, the loop lends its pty master and its
socket to ``vcom._relay.relay`` (socat's loop in C: both directions, one poll, the GIL released), run by a
small pool of threads, and takes them back as soon as anything needs Python:

* the relay returns by itself on a pty status byte (a termios change or a flush: handled in order with the
  data), on a telnet command from the server (the session decodes it), on the slave's close, on the
  socket's EOF or error (asyncio reads them again and acts as always), and after a quiet second (the port
  then goes to the shared relay, below, which holds it for nothing until it moves data again);
* the loop takes it back (an eventfd wakes the relay, which returns within microseconds: every descriptor
  is non-blocking) before anything else touches the socket or the pty: the link calls the port's
  ``reclaim`` before each write, pause, resume or close, and the port before its own uses.

What the relay had read and not yet passed on comes back with it and goes first.  Only a plain TCP link
(raw or RFC 2217) in its steady state, a port open by one program, without --emulate-baud, monitors or
split members, is lent.  Without the C extension ports never go express.

A port that is only warm (a chunk now and then, as a thousand ports streaming a few KB/s each) is lent to
the loop's shared relay instead (``Shared``: one ``vcom._relay.Mux`` per event loop).  Its epoll set is
one reader of the loop; each wake-up moves every ready chunk in C with no Python per chunk, and hands
back only the ports that need Python, for the same reasons, plus a send or pty write that took only part
(the rest is queued by the loop as usual: the Mux holds no buffer per port) and a port that grew hot (it
moves to a relay thread).  A quiet port stays lent: the next chunk of a program that polls its device every
few seconds then moves in C at once, not through the loop's Python after a hand-back (its first round trip
after 1.5 s of quiet: about 500 us on the loop, 370 us lent, as socat's).  While ports are lent and send,
a watch every ACK_WATCH seconds tells the links of those that sent to look for the server's acknowledgement
(the peer timeout), as a write of their own would.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import struct
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from .. import PURE_PYTHON

try:
    if PURE_PYTHON:
        raise ImportError("VCOM_PURE_PYTHON is set")
    from .. import _relay
except ImportError:  # built without a C compiler: every port stays on the loop
    _relay = None  # type: ignore[assignment]

AVAILABLE = _relay is not None
# Wake-ups within HOT_WINDOW seconds that make a port hot.  VCOM_EXPRESS_HOT=1 makes every eligible port go
# express at its first chunk (the test suite runs that way too); 0 turns express off.
HOT_EVENTS = int(os.environ.get("VCOM_EXPRESS_HOT", "48"))
HOT_WINDOW = 0.05
# Wake-ups that moved data within WARM_WINDOW seconds that lend a port to the loop's shared relay (Shared).
# Ten seconds, so that a program that polls its device every second or two is lent too (a lent port costs
# nothing while quiet); the eight wake-ups bound how often a port whose control events (termios changes,
# telnet commands) keep handing it back is lent again.
# VCOM_EXPRESS_WARM=0 keeps ports that are not hot on the loop.
WARM_EVENTS = int(os.environ.get("VCOM_EXPRESS_WARM", "8"))
WARM_WINDOW = 10.0
SHARED = AVAILABLE and HOT_EVENTS > 0 and WARM_EVENTS > 0
# What _warm counts to: the shared relay's threshold when there is one, else a relay thread's.
LEND_EVENTS = min(WARM_EVENTS, HOT_EVENTS) if SHARED else HOT_EVENTS
LEND_WINDOW = WARM_WINDOW if SHARED else HOT_WINDOW
# A relay that moved this much before a command or a status byte made it return leaves its port hot.
BUSY_RUN = 16 * 1024
# How long a relay thread waits with nothing moving before it hands the port back (milliseconds).
IDLE_MS = 1000
# Seconds between looks at which lent ports sent data (see _Hub): armed only while they do.
ACK_WATCH = 1.0
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
    def hot(self) -> bool:
        """The shared relay handed it back for a relay thread of its own: grown hot, or more to move than
        the other side took at once (a relay thread waits for it to take the rest; the Mux does not)."""
        return self.reason in (_relay.HOT, _relay.BUSY)

    @property
    def idle(self) -> bool:
        """A relay thread that moved nothing for IDLE_MS: the port goes to the shared relay."""
        return self.reason == _relay.IDLE

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


class Shared:
    """One port lent to its event loop's shared relay: started on the loop, handed back by the Mux (then
    ``returned`` is called with it, on the loop) or taken back by ``stop``."""

    def __init__(self, master: int, sock: int, iac: bool, returned: Callable[[Shared], None], *,
                 hot: bool, sent: Callable[[], None]) -> None:
        self._hub = _Hub.of(asyncio.get_running_loop())
        self._key = master
        self._returned = returned
        self._sent = sent  # data went to the server since the last watch
        self._outcome: Outcome | None = None
        self._hub.lend(self, sock, iac, hot)

    def counts(self) -> tuple[int, int]:
        if self._outcome is not None:
            return self._outcome.sent, self._outcome.received
        return self._hub.mux.counts(self._key) or (0, 0)

    def stop(self) -> Outcome:
        if self._outcome is None:
            self._outcome = self._hub.take_back(self._key)
        return self._outcome

    def outcome(self) -> Outcome:
        assert self._outcome is not None
        return self._outcome


class _Hub:
    """An event loop's Mux: its reader on the loop, the ports lent to it, and the watch that tells the
    links of those that sent data to look for the server's acknowledgement (armed only while lent ports
    send, so an idle manager never wakes for it)."""

    _hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Hub] = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Hub:
        hub = cls._hubs.get(loop)
        if hub is None:
            hub = cls._hubs[loop] = cls(loop)
        return hub

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # not the loop itself: it is this hub's key in _hubs
        self.mux = _relay.Mux()
        self.lent: dict[int, Shared] = {}
        self._watch: asyncio.TimerHandle | None = None
        loop.add_reader(self.mux.fileno(), self._ready)

    def lend(self, port: Shared, sock: int, iac: bool, hot: bool) -> None:
        self.mux.add(port._key, sock, iac, HOT_EVENTS if hot else 0, round(HOT_WINDOW * 1000))
        self.lent[port._key] = port
        self._arm()

    def take_back(self, key: int) -> Outcome:
        self.lent.pop(key, None)
        outcome = self.mux.remove(key)
        if outcome is None:  # not lent: nothing held, nothing moved
            return Outcome(_relay.WAKE, b"", b"", b"", 0, b"", 0, 0)
        return Outcome(*outcome)

    def _ready(self) -> None:
        self._hand_back(self.mux.run())
        if self._watch is None:
            self._arm()  # something moved: the watch looks whether it was towards a server

    def _watched(self) -> None:
        self._watch = None
        sending = self.mux.sending()
        for key in sending:
            port = self.lent.get(key)
            if port is not None:
                port._sent()
        if sending:
            self._arm()

    def _arm(self) -> None:
        loop = self._loop()
        if self._watch is None and self.lent and loop is not None:
            self._watch = loop.call_later(ACK_WATCH, self._watched)

    def _hand_back(self, returned: list[tuple[int, tuple]]) -> None:
        # Every outcome is taken before any port acts on its own, so that one port's handling (which may
        # take another port back) finds the others already handed back.
        ports = []
        for key, outcome in returned:
            port = self.lent.pop(key)
            port._outcome = Outcome(*outcome)
            ports.append(port)
        for port in ports:
            port._returned(port)
