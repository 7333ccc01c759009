"""One network connection to a remote serial port, kept alive.

A :class:`Link` owns the socket, the reconnect policy and the network half of
back-pressure.  It knows nothing of ptys: the port hands it bytes and line
settings, and it reports bytes, state and the remote's answers back through a
:class:`LinkListener`.

What goes on the wire is decided by a *session* per transport:
:class:`RawSession` passes bytes through; :class:`Rfc2217Session` wraps the
sans-I/O codec in :mod:`vcom.rfc2217`.  Parts of the link live in modules of
their own: the asyncio protocols (:mod:`.protocols`), each connection's share
of the loop (:mod:`.fairness`), the peer-timeout watch (:mod:`.watch`), TLS
(:mod:`.handshake`) and lending the socket to a relay (:mod:`.lending`).

Rules this module keeps:

* Settings in force are sent right after negotiation and after **every**
  reconnect, because servers (ser2net, sredird) restore the device's termios
  when a client leaves.
* Nothing waits for an answer: SET commands are written and data follows at
  once; answers update :attr:`Link.remote` whenever they come.  The only wait
  is the option negotiation at connect, bounded by ``negotiation_timeout``, so
  that the first bytes of a session do not leave at the server's default speed.
* Back-pressure by not reading: when the socket's send buffer is full (or the
  server sent FLOWCONTROL-SUSPEND) the link reports "not writable" and the
  port stops reading its pty; when the port cannot write to the pty it calls
  :meth:`Link.pause_reading`.  No buffer grows without bound.
* Reconnect with capped exponential back-off and full jitter (so that many
  ports behind one server that just rebooted do not reconnect in lock step).
* No connection takes more than its share of the event loop, whatever its
  server sends: one wake-up reads at most what the session can decode in
  about ``RECEIVE_SLICE`` (cheap data up to 64 KiB at once; a flood of telnet
  commands a few bytes), and a connection whose decoding keeps taking more
  than ``RECEIVE_SHARE`` of the time stops being read until its share has
  built up again.  The ports beside it keep their round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import Callable
from typing import Any

from ..ratelog import RateLog
from ..settings import LineSettings, Signals
from ..target import Target, Transport
from ..tls import HANDSHAKE_TIMEOUT
from .fairness import UNCHARGED, ReceiveShare
from .handshake import LinkTls
from .lending import SocketLending
from .protocols import DatagramProtocol, StreamProtocol
from .session import (
    PURGE_ANSWER_TIMEOUT,
    WRITE_HIGH_WATER,
    RawSession,
    Rfc2217Session,
    Session,
    SessionOwner,
    SettlingSession,
)
from .sockets import PEER_TIMEOUT, connect_failure, socket_queue, tune_socket, unacknowledged
from .state import HEALTHY_AFTER, Backoff, Lines, LinkListener, LinkState, LinkStats, RemoteState, link_status
from .watch import AckWatch

log = logging.getLogger("vcom.link")  # one logger name for the whole package
# Problems a server can repeat without end (refusals, junk, being hung up on): a few lines a minute per port.
_problems = RateLog(log)

# UDP payload per datagram: small enough to cross any path (IPv6 minimum MTU 1280) without fragmentation,
# where one lost fragment would lose the whole datagram.
DATAGRAM_SIZE = 1024
# The link's write buffer drains to this before the port reads its pty again.
_WRITE_LOW_WATER = 16 * 1024


class Link(SocketLending):
    def __init__(
        self,
        target: Target,
        listener: LinkListener,
        *,
        name: str,
        backoff: Backoff = Backoff(),
        connect_timeout: float = 10.0,
        negotiation_timeout: float = 3.0,
        tls_handshake_timeout: float = HANDSHAKE_TIMEOUT,
        peer_timeout: float = PEER_TIMEOUT,
    ) -> None:
        self.target = target
        self.name = name
        self.state = LinkState.IDLE
        self.stats = LinkStats()
        self.remote = RemoteState()
        self._listener = listener
        self._backoff = backoff
        self._connect_timeout = connect_timeout
        self._negotiation_timeout = negotiation_timeout
        self._settings = LineSettings()
        self._lines = Lines()
        self._task: asyncio.Task[None] | None = None
        self._transport: asyncio.Transport | None = None
        self._session: Session | None = None
        self._socket_ok = True
        self._reading_paused = False
        self._writable = False
        self._wake = asyncio.Event()
        self._tls = LinkTls(target, name, tls_handshake_timeout) if target.tls else None
        self._sent_at_connect = 0  # bytes_to_remote when this connection began
        self._loss: int | None = None  # measured as the connection went
        self._violation_reason: str | None = None
        self._acks = AckWatch(peer_timeout, lambda: self._transport, self._peer_silent)
        self._unanswered = False  # the ACK check gave up on the connection
        self._datagrams = target.transport is Transport.UDP
        # The fairness budget (what the next read may take, the seconds of the loop this link may still use
        # before it waits, and when that was reckoned), when the current read began, and the timer of a wait.
        self._share = ReceiveShare()
        self._read_started = 0.0
        self._throttle: asyncio.TimerHandle | None = None
        # While a port's express relay has the socket (vcom.port.express): how to take it back.  Everything
        # here that touches the socket calls it first, so the loop and the relay never use it at once.
        self._lender: Callable[[], None] | None = None

    # -- the port's side

    @property
    def running(self) -> bool:
        return self._task is not None

    @property
    def writable(self) -> bool:
        return self._writable

    @property
    def peer_timeout(self) -> float:
        return self._acks.peer_timeout  # 0: the kernel's own limits (minutes)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"link {self.name}")

    def stop_nowait(self) -> asyncio.Task[None] | None:
        """Disconnect and stop reconnecting, at once: a start() right after begins a new connection."""
        if self._lender is not None:
            self._reclaim()
        task, self._task = self._task, None
        if task is None:
            return None
        task.cancel()
        task.add_done_callback(self._stopped)
        return task

    async def stop(self) -> None:
        task = self.stop_nowait()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _stopped(self, _task: asyncio.Task[None]) -> None:
        if self._task is None:  # not started again meanwhile (a program reopened the port)
            self._set_state(LinkState.IDLE)

    def retry_now(self) -> None:
        """Skip the rest of the current back-off (e.g. a network interface came up)."""
        self._wake.set()

    def send(self, data: bytes) -> None:
        if self._lender is not None:
            self._reclaim()
        session = self._session
        transport = self._transport
        if transport is None or session is None:
            raise RuntimeError("send() while not connected")
        if self._datagrams:
            self._write(session.encode(data))
        else:
            transport.write(session.encode(data))
            self._acks.watch()
        self.stats.bytes_to_remote += len(data)

    def apply_settings(self, settings: LineSettings) -> None:
        self._settings = settings
        if self._transport is not None and self._session is not None and self._session.negotiated:
            self._write(self._session.settings(settings))

    def purge(self, *, receive: bool, transmit: bool) -> None:
        """PURGE-DATA; after a receive purge, what arrives before the server's answer is discarded (it left
        the remote UART before the purge), for at most PURGE_ANSWER_TIMEOUT from servers that never answer."""
        session = self._session
        if self._transport is None or session is None or not session.negotiated:
            return
        self._write(session.purge(receive, transmit))
        if session.awaiting_purge:
            asyncio.get_running_loop().call_later(PURGE_ANSWER_TIMEOUT, self._purge_expired, session)

    def _purge_expired(self, session: Session) -> None:
        if session is self._session and session.awaiting_purge:
            session.purge_unanswered()

    def set_lines(self, lines: Lines) -> None:
        """Drive DTR/RTS; sent at once (no waiting for answers), and again after every reconnect."""
        self._lines = lines
        if self._transport is not None and self._session is not None and self._session.negotiated:
            self._write(self._session.lines(lines))

    @property
    def lines(self) -> Lines:
        return self._lines

    def set_break(self, on: bool) -> None:
        """BREAK on or off at the remote UART (RFC 2217 SET-CONTROL 5/6), sent at once."""
        if self._transport is not None and self._session is not None and self._session.negotiated:
            self._write(self._session.send_break(on))

    def _purged(self, count: int) -> None:
        self.stats.purged_bytes += count

    def _modem_changed(self, signals: Signals, state: int) -> None:
        notify = getattr(self._listener, "link_modem", None)
        if notify is not None:
            notify(signals, state)

    @property
    def unsent(self) -> int:
        """Bytes handed to the link that have not reached the socket yet."""
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    def in_flight(self) -> int:
        """Bytes handed to the link that the server has not received yet: the link's buffer and what the
        socket holds unacknowledged (SIOCOUTQ)."""
        transport = self._transport
        if transport is None:
            return 0
        return transport.get_write_buffer_size() + socket_queue(transport)

    async def drained(self) -> None:
        """Until the server has received everything handed to the link (TCP has its acknowledgement), or
        the connection is gone.  The kernel has no event for the last acknowledgement, so this looks again
        at a growing interval (1 to 20 ms), and only while someone waits."""
        delay = 0.001
        while self.in_flight():
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)

    def pause_reading(self) -> None:
        if self._reading_paused:
            return  # the group asks after every delivery: no system call when nothing changes
        if self._lender is not None:
            self._reclaim()
        self._reading_paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if not self._reading_paused:
            return
        if self._lender is not None:
            self._reclaim()
        self._reading_paused = False
        if self._throttle is None:
            self._resume_transport()

    def _resume_transport(self) -> None:
        if self._transport is not None and self._transport.is_reading() is False:
            self._transport.resume_reading()

    def status(self) -> dict[str, Any]:
        tls = self._tls.side.status() if self._tls is not None else None
        return link_status(self.target, self.state, self.remote, self._lines, self.stats, tls, self.peer_timeout)

    def reload_tls(self) -> str | None:
        """Read the TLS files again for the next handshake (the connection up now stays); the reason if they
        cannot be used, in which case the ones read before stay in use."""
        return self._tls.side.reload() if self._tls is not None else None

    # -- connection loop

    async def _run(self) -> None:
        attempt = 0
        after_loss = False  # a connection of this run was lost: the next one is a reconnect
        outage: float | None = None  # when a healthy connection was last lost
        loop = asyncio.get_running_loop()
        try:
            while True:
                started = loop.time()
                reached = await self._connect_once(after_loss)
                after_loss = after_loss or reached
                if reached and loop.time() - started >= HEALTHY_AFTER:
                    attempt = 0
                    outage = loop.time()
                delay = self._backoff.delay(attempt)
                if outage is not None and loop.time() - outage < self._backoff.quick_for:
                    # The server was fine a moment ago: be back within seconds of the network healing, not
                    # after a back-off that grew while it was down.
                    delay = min(delay, self._backoff.quick)
                attempt += 1
                self._set_state(LinkState.BACKOFF)
                self._wake.clear()
                # asyncio.timeout, never asyncio.wait_for: before Python 3.12, wait_for returns normally
                # when the task is cancelled in the same turn as what it waits for completes (retry_now()
                # then stop(), or a connect that completes as the port is removed), and the link would
                # then run on with nobody to stop it while stop() waited for ever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
        finally:
            self._drop_transport()

    async def _connect_once(self, after_loss: bool = False) -> bool:
        """One connection's life; returns whether the server was reached (and then lost)."""
        loop = asyncio.get_running_loop()
        self._set_state(LinkState.CONNECTING)
        # The TLS handshake has its own bound (and message), on top of the TCP connect's.
        bound = self._connect_timeout + (self._tls.handshake_timeout if self._tls is not None else 0)
        try:
            async with asyncio.timeout(bound):  # not wait_for: see _run
                _, protocol = await self._open_transport()
        except TimeoutError:
            self._drop_transport()
            self._error(f"connect to {self.target}: no answer within {self._connect_timeout:g} s")
            return False
        except OSError as exc:
            self._drop_transport()
            self._error(f"connect to {self.target}: {connect_failure(exc, self.target.host)}")
            return False
        if after_loss:  # a connect on open, or after a deliberate disconnect, is not a reconnect
            self.stats.reconnects += 1
        self.stats.connects += 1
        log.info("%s: connected to %s", self.name, self.target)
        timer = loop.call_later(self._negotiation_timeout, self._negotiation_timeout_hit)
        self._after_input()
        try:
            cause = await protocol.lost
        finally:
            timer.cancel()
            self._drop_transport()
        self._error(self._loss_reason(cause))
        self._count_loss()
        return True

    def _loss_reason(self, exc: Exception | None) -> str:
        if self._violation_reason is not None:
            reason, self._violation_reason = self._violation_reason, None
            return f"disconnected from {self.target}: {reason}"
        unanswered, self._unanswered = self._unanswered, False
        if (unanswered or isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT) and self.peer_timeout:
            self.stats.timeouts += 1
            return (f"connection to {self.target} lost: no answer from the server within {self.peer_timeout:g} s "
                    "(peer timeout)")
        return f"connection to {self.target} lost" + self._loss_detail(exc)

    def _count_loss(self) -> None:
        lost, self._loss = self._loss or 0, None
        if lost:
            self.stats.lost_bytes += lost
            _problems.warning((self.name, "lost"), "%s: %d byte(s) sent to %s were not acknowledged when the "
                              "connection was lost (lost_bytes %d)", self.name, lost, self.target,
                              self.stats.lost_bytes)

    def _connection_lost(self) -> None:
        """The connection is gone, its socket not yet closed: what the server never acknowledged is lost."""
        transport = self._transport
        if transport is None or self._loss is not None or self.target.transport is Transport.UDP:
            return
        self._loss = unacknowledged(transport, self.stats.bytes_to_remote - self._sent_at_connect)

    def _violation(self, reason: str) -> None:
        """The server went past a bound: close the connection (retried after the back-off), say why once."""
        transport = self._transport
        if transport is None or self._violation_reason is not None:
            return
        self._violation_reason = reason
        self.stats.bound_disconnects += 1
        # What waits for the server is given up with the connection.
        self._loss = transport.get_write_buffer_size() + socket_queue(transport)
        asyncio.get_running_loop().call_soon(self._abort_if, transport)

    def _abort_if(self, transport: asyncio.BaseTransport) -> None:
        # Not from inside the session's own callback: abort once the current read has been handled.
        if self._lender is not None:
            self._reclaim()
        if transport is self._transport:
            transport.abort()

    def _connection_made(self, transport: Any) -> None:
        """Called by the protocol before it can deliver a byte: the server may speak first (ser2net
        sends its whole negotiation at accept), so the session must exist from here on.  Over TLS this is
        after the handshake, the server's certificate verified."""
        tune_socket(transport, self.peer_timeout)
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, _WRITE_LOW_WATER)
        self._transport = transport
        self._sent_at_connect = self.stats.bytes_to_remote
        self._loss = None
        self._violation_reason = None
        self._unanswered = False
        self._socket_ok = True
        self.remote = RemoteState(line_errors=self.remote.line_errors)  # counts live as long as the port
        tls, settle = self._tls, None
        if tls is not None:
            settle = tls.connected(transport, lambda: self._transport is transport, self.stats.bytes_from_remote)
        self._session = self._new_session(settling=settle is not None)
        if tls is not None and settle is not None:
            tls.settle = asyncio.get_running_loop().call_later(settle, self._negotiation_timeout_hit)
        if self._reading_paused:
            transport.pause_reading()
        self._write(self._session.start(self._current_settings()))

    def _loss_detail(self, exc: Exception | None) -> str:
        """Why a connection ended, as the end of a sentence; over TLS, what a handshake failure means."""
        if self._tls is not None:
            detail = self._tls.loss_detail(exc, self.remote.com_port, self.stats.bytes_from_remote)
            if detail is not None:
                return detail
        if exc is not None:
            return f": {exc}"
        return " (closed by the server)"

    def _current_settings(self) -> LineSettings:
        # Ask the port for the program's termios now: a change it has not read from the pty yet
        # (the status byte waits while the link is down) would otherwise go out one step late.
        refresh = getattr(self._listener, "link_settings", None)
        if refresh is not None:
            self._settings = refresh()
        return self._settings

    async def _open_transport(self) -> tuple[Any, Any]:
        loop = asyncio.get_running_loop()
        if self.target.transport is Transport.UDP:
            return await loop.create_datagram_endpoint(
                lambda: DatagramProtocol(self), remote_addr=(self.target.host, self.target.port))
        if self._tls is not None:
            return await self._tls.open(loop, lambda: StreamProtocol(self))
        return await loop.create_connection(lambda: StreamProtocol(self), self.target.host, self.target.port)

    def _new_session(self, *, settling: bool = False) -> Session:
        if self.target.transport is Transport.RFC2217:
            owner = SessionOwner(settings=self._current_settings, lines=lambda: self._lines,
                                 modem_changed=self._modem_changed, discarded=self._purged, backlog=self._backlog,
                                 violation=self._violation)
            return Rfc2217Session(self.remote, self.name, owner)
        return SettlingSession() if settling else RawSession()

    def _backlog(self) -> int:
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    def _negotiation_timeout_hit(self) -> None:
        if self._session is not None and self._transport is not None:
            self._write(self._session.negotiation_timed_out())
            self._after_input()

    # -- callbacks from the protocol

    def _received(self, data: bytes, read_started: float | None = None) -> None:
        session = self._session
        if session is None:
            return
        decoding = time.perf_counter()
        payload, reply = session.receive(data)
        decoded = time.perf_counter()
        if reply:
            self._write(reply)
        if payload:
            self.stats.bytes_from_remote += len(payload)
            self._listener.link_data(payload)  # first: the rest is bookkeeping a round trip need not wait for
        if type(session) is not RawSession:  # raw data never changes negotiation or suspension
            self._after_input()
        if decoded - decoding > UNCHARGED or len(data) >= len(self._share.view):
            self._account(len(data), decoding, decoded, read_started)

    def _account(self, size: int, decoding: float, decoded: float, read_started: float | None) -> None:
        """Charge a read to this link's share of the loop (``ReceiveShare.charge``); stop reading for as long
        as the share says."""
        wait = self._share.charge(size, decoding, decoded, read_started)
        if wait and self._throttle is None and self._transport is not None:
            if not self._reading_paused:
                self._transport.pause_reading()
            self._throttle = asyncio.get_running_loop().call_later(wait, self._unthrottle)

    def _unthrottle(self) -> None:
        self._throttle = None
        if self._lender is not None:
            self._reclaim()
        if not self._reading_paused:
            self._resume_transport()

    def _socket_writable(self, ok: bool) -> None:
        self._socket_ok = ok
        self._update_writable()

    # -- helpers

    def _after_input(self) -> None:
        """Negotiation finished or the server suspended/resumed us: refresh state and writability."""
        if self._session is not None and self._session.negotiated and self.state is LinkState.CONNECTING:
            self._set_state(LinkState.CONNECTED)
        self._update_writable()

    def _update_writable(self) -> None:
        writable = (
            self._transport is not None
            and self._session is not None
            and self._session.negotiated
            and self._socket_ok
            and not self.remote.suspended
        )
        if writable != self._writable:
            self._writable = writable
            self._listener.link_writable(writable)

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if not data or transport is None:
            return  # nothing touches the socket: a relay that has it keeps it
        if self._lender is not None:
            self._reclaim()
        if self._datagrams:
            view = memoryview(data)  # slices of a view: no copy per datagram
            for start in range(0, len(data), DATAGRAM_SIZE):
                transport.sendto(view[start:start + DATAGRAM_SIZE])  # type: ignore[attr-defined]
        else:
            transport.write(data)
            self._acks.watch()

    def _peer_silent(self, transport: asyncio.Transport) -> None:
        """The peer-timeout watch gave up on the connection (see ``AckWatch._check``)."""
        if self._lender is not None:
            self._reclaim()
        self._unanswered = True
        transport.abort()

    def _drop_transport(self) -> None:
        if self._lender is not None:
            self._reclaim()
        transport, self._transport = self._transport, None
        self._session = None
        self._acks.cancel()
        if transport is not None:
            transport.abort()
        self._update_writable()

    def _set_state(self, state: LinkState) -> None:
        if state is not self.state:
            self.state = state
            self._listener.link_changed()

    def _error(self, message: str) -> None:
        if message != self.stats.last_error:
            _problems.warning((self.name, "error", message), "%s: %s", self.name, message)
        self.stats.last_error = message
