"""One network connection to a remote serial port, kept alive.

A :class:`Link` owns the socket, the reconnect policy and the network half of
back-pressure.  It knows nothing of ptys: the port hands it bytes and line
settings, and it reports bytes, state and the remote's answers back through a
:class:`LinkListener`.

What goes on the wire is decided by a *session* per transport:
:class:`RawSession` passes bytes through; :class:`Rfc2217Session` wraps the
sans-I/O codec in :mod:`vcom.rfc2217`.

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
import enum
import fcntl
import logging
import os
import random
import socket
import sys
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import rfc2217
from .settings import FlowControl, LineSettings, Signals
from .target import Target, Transport

log = logging.getLogger(__name__)

# A connection that stayed up this long counts as healthy: the back-off restarts from its shortest delay.
_HEALTHY_AFTER = 10.0
_WRITE_HIGH_WATER = 64 * 1024
SOCKET_SEND_BUFFER = 64 * 1024
# UDP payload per datagram: small enough to cross any path (IPv6 minimum MTU 1280) without fragmentation,
# where one lost fragment would lose the whole datagram.
DATAGRAM_SIZE = 1024
_WRITE_LOW_WATER = 16 * 1024
# Fairness, per connection: the most one wake-up reads (also the size of the one receive buffer all links
# share), the least, the decoding time one wake-up aims at, and the share of the time that decoding may
# take over a longer stretch (a token bucket holding at most RECEIVE_BURST).  Plain data decodes at well
# under a nanosecond a byte: a busy healthy link reads 64 KiB at a time and never comes near its share.
RECEIVE_MAX = 64 * 1024
RECEIVE_MIN = 64
RECEIVE_SLICE = 50e-6
RECEIVE_SHARE = 0.1
RECEIVE_BURST = 5e-3
# A short read that decoded in less is not charged (nor is the reckoning itself spent on it): a port's round
# trips and a slow stream, read by read.  A command flood in short reads costs more per read.
_UNCHARGED = 2e-6


class LinkState(enum.Enum):
    IDLE = "idle"  # not wanted (on-open policy and no program)
    CONNECTING = "connecting"  # TCP connect or option negotiation in progress
    CONNECTED = "connected"
    BACKOFF = "backoff"  # waiting before the next attempt


class LinkListener(Protocol):
    def link_data(self, data: bytes) -> None: ...

    def link_writable(self, writable: bool) -> None: ...

    def link_changed(self) -> None: ...


@dataclass(slots=True)
class LinkStats:
    bytes_to_remote: int = 0
    bytes_from_remote: int = 0
    connects: int = 0
    reconnects: int = 0
    last_error: str | None = None


@dataclass(slots=True)
class RemoteState:
    """What the server said is in force (``None``: not answered yet)."""

    com_port: bool | None = None
    signature: str | None = None
    baud: int | None = None
    data_bits: int | None = None
    parity: str | None = None
    stop_bits: str | None = None
    flow_out: str | None = None
    flow_in: str | None = None
    suspended: bool = False
    modem: Signals = field(default_factory=Signals)  # cts, dsr, dcd, ri as last notified
    line_errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LINE_ERRORS, 0))

    def settings_json(self) -> dict[str, Any]:
        return {
            "baud": self.baud,
            "data_bits": self.data_bits,
            "parity": self.parity,
            "stop_bits": self.stop_bits,
            "flow_out": self.flow_out,
            "flow_in": self.flow_in,
        }


# NOTIFY-LINESTATE bits counted per port (RFC 2217, SET-LINESTATE-MASK).
LINE_ERRORS = {
    "overrun": rfc2217.LineState.OVERRUN,
    "parity": rfc2217.LineState.PARITY_ERROR,
    "framing": rfc2217.LineState.FRAMING_ERROR,
    "break": rfc2217.LineState.BREAK,
}
# What we ask the server to notify.  Modem: every line and delta except trailing-edge RI, so the mask is
# never 0xFF: sredird's fixed-length parser leaks the byte after a doubled 0xFF onto the serial line.
MODEMSTATE_MASK = rfc2217.ModemState(0xFF & ~rfc2217.ModemState.TRAILING_RI)
LINESTATE_MASK = rfc2217.LineState(sum(LINE_ERRORS.values()))


@dataclass(frozen=True, slots=True)
class Lines:
    """The modem lines this side drives; ``None``: leave as the server has them."""

    dtr: bool | None = None
    rts: bool | None = None


@dataclass(frozen=True, slots=True)
class Backoff:
    initial: float = 0.25
    maximum: float = 15.0

    def delay(self, attempt: int) -> float:
        # Full jitter between half and all of the capped exponential delay.
        ceiling = min(self.maximum, self.initial * (2 ** min(attempt, 30)))
        return random.uniform(ceiling / 2, ceiling)


# -- sessions: what one transport puts on the wire ------------------------------------------------


class Session(Protocol):
    negotiated: bool

    def start(self, settings: LineSettings) -> bytes: ...

    def receive(self, data: bytes) -> tuple[bytes, bytes]: ...

    def encode(self, data: bytes) -> bytes: ...

    def settings(self, settings: LineSettings) -> bytes: ...

    def purge(self, receive: bool, transmit: bool) -> bytes: ...

    def lines(self, lines: Lines) -> bytes: ...

    def send_break(self, on: bool) -> bytes: ...

    def negotiation_timed_out(self) -> bytes: ...


class RawSession:
    """Raw TCP: bytes are bytes; there is nowhere to send settings."""

    negotiated = True

    def start(self, settings: LineSettings) -> bytes:
        return b""

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        return data, b""

    def encode(self, data: bytes) -> bytes:
        return data

    def settings(self, settings: LineSettings) -> bytes:
        return b""

    def purge(self, receive: bool, transmit: bool) -> bytes:
        return b""

    def lines(self, lines: Lines) -> bytes:
        return b""

    def send_break(self, on: bool) -> bytes:
        return b""

    def negotiation_timed_out(self) -> bytes:
        return b""


@dataclass(frozen=True, slots=True)
class SessionOwner:
    """What an RFC 2217 session asks of its link: the values in force now, and where modem news goes."""

    settings: Callable[[], LineSettings]
    lines: Callable[[], Lines]
    modem_changed: Callable[[Signals, int], None]  # the lines as now known, and the raw state with its delta bits


class Rfc2217Session:
    """RFC 2217 client role on top of the sans-I/O codec.

    ``receive`` returns (user data, bytes to send back); answers and
    notifications update :attr:`remote`.  Commands are only sent once the
    server agreed to COM-PORT-OPTION; a server that refuses it gets one
    warning and carries plain data (RFC 2217 section 2: without the option the
    connection is an ordinary telnet one).
    """

    def __init__(self, remote: RemoteState, name: str, owner: SessionOwner) -> None:
        self._codec = rfc2217.Connection(rfc2217.Role.CLIENT)
        self._remote = remote
        self._name = name
        self._owner = owner
        self._settings = LineSettings()
        self._sent: list[Any] = []  # last value sent per command, to send only changes
        self._sent_lines = Lines()
        self.negotiated = False

    def start(self, settings: LineSettings) -> bytes:
        self._settings = settings
        return self._codec.initiate()

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        events = self._codec.receive_data(data)
        if len(events) == 1 and type(events[0]) is rfc2217.Data:
            # A busy link's every read: the payload goes on as the codec made it, without a copy.
            return events[0].data, self._codec.data_to_send()
        payload = []
        replies = [b""]  # the codec's own answers (option negotiation) go first
        for event in events:
            if type(event) is rfc2217.Data:
                payload.append(event.data)
            else:
                replies.append(self._event(event))
        replies[0] = self._codec.data_to_send()
        return b"".join(payload), b"".join(replies)

    def encode(self, data: bytes) -> bytes:
        return self._codec.send_data(data)

    def settings(self, settings: LineSettings) -> bytes:
        self._settings = settings
        if not self._remote.com_port:
            return b""
        commands = rfc2217.settings_commands(settings)
        changed = [c for i, c in enumerate(commands) if i >= len(self._sent) or self._sent[i] != c]
        self._sent = commands
        return b"".join(self._codec.send(c) for c in changed)

    def lines(self, lines: Lines) -> bytes:
        if not self._remote.com_port:
            return b""
        out = b""
        if lines.dtr is not None and lines.dtr != self._sent_lines.dtr:
            out += self._codec.send(rfc2217.SetControl(rfc2217.dtr_control(lines.dtr)))
        if lines.rts is not None and lines.rts != self._sent_lines.rts:
            out += self._codec.send(rfc2217.SetControl(rfc2217.rts_control(lines.rts)))
        self._sent_lines = lines
        return out

    def send_break(self, on: bool) -> bytes:
        if not self._remote.com_port:
            return b""
        return self._codec.send(rfc2217.SetControl(rfc2217.break_control(on)))

    def purge(self, receive: bool, transmit: bool) -> bytes:
        if not self._remote.com_port or not (receive or transmit):
            return b""
        which = rfc2217.Purge.BOTH if receive and transmit else (
            rfc2217.Purge.RECEIVE if receive else rfc2217.Purge.TRANSMIT)
        return self._codec.send(rfc2217.PurgeData(which))

    def negotiation_timed_out(self) -> bytes:
        if self.negotiated:
            return b""
        log.warning("%s: server did not negotiate COM-PORT-OPTION; carrying plain data, settings are not sent",
                    self._name)
        self.negotiated = True
        return b""

    def _event(self, event: object) -> bytes:
        remote = self._remote
        match event:
            case rfc2217.ComPortOption(enabled=True):
                remote.com_port = True
                self.negotiated = True
                self._sent = []
                self._sent_lines = Lines()
                # RFC 2217 recommends settings first; the masks come before them so that the first
                # notifications already describe the line as the settings leave it.
                return (self._codec.send(rfc2217.Signature(""))
                        + self._codec.send(rfc2217.SetModemStateMask(MODEMSTATE_MASK))
                        + self._codec.send(rfc2217.SetLineStateMask(LINESTATE_MASK))
                        + self.settings(self._owner.settings())
                        + self.lines(self._owner.lines()))
            case rfc2217.ComPortOption(enabled=False):
                if remote.com_port is not False:
                    log.warning("%s: server refused COM-PORT-OPTION (RFC 2217); carrying plain data, "
                                "line settings stay as the server has them", self._name)
                remote.com_port = False
                self.negotiated = True
            case rfc2217.Signature(text=text) if text:
                remote.signature = text
            case rfc2217.Signature():
                # The server asks who we are (RFC 2217 section 3: either side may ask).
                return self._codec.send(rfc2217.Signature("vcom"))
            case rfc2217.SetBaudRate(baud=baud):
                remote.baud = baud
            case rfc2217.SetDataSize(bits=bits):
                remote.data_bits = bits
            case rfc2217.SetParity(parity=code):
                parity = rfc2217.parity_from_code(code)
                remote.parity = parity.value if parity else f"code {code}"
            case rfc2217.SetStopSize(stop=code):
                stop = rfc2217.stop_from_code(code)
                remote.stop_bits = stop.value if stop else f"code {code}"
            case rfc2217.SetControl(value=value):
                self._control_answer(value)
            case rfc2217.FlowControlSuspend():
                remote.suspended = True
            case rfc2217.FlowControlResume():
                remote.suspended = False
            case rfc2217.NotifyModemState(state=state):
                remote.modem = rfc2217.modem_signals(state, remote.modem)
                self._owner.modem_changed(remote.modem, int(state))
            case rfc2217.NotifyLineState(state=state):
                for name, bit in LINE_ERRORS.items():
                    if state & bit:
                        remote.line_errors[name] += 1
            case rfc2217.ProtocolError(message=message):
                log.info("%s: ignored from server: %s", self._name, message)
        return b""

    def _control_answer(self, value: int) -> None:
        decoded = rfc2217.flow_from_control(value)
        if decoded is None:
            return  # DTR/RTS/BREAK answers: modem lines are tracked elsewhere
        direction, flow = decoded
        if direction == "out":
            self._remote.flow_out = flow.value
        else:
            self._remote.flow_in = flow.value


# -- the link ---------------------------------------------------------------------------------------


class _LinkProtocol:
    """What both transports' protocols share: hand everything to the link."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._link._connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self._link._socket_writable(False)

    def resume_writing(self) -> None:
        self._link._socket_writable(True)


class _StreamProtocol(_LinkProtocol, asyncio.BufferedProtocol):
    """Reads into one buffer shared by every link, as much as the link's budget allows: asyncio's own
    reads would allocate 256 KiB for each, even for one byte.  The loop runs one callback at a time and
    each read is handed on (copied) before the next, so one buffer serves all."""

    def get_buffer(self, sizehint: int) -> memoryview:
        link = self._link
        link._read_started = time.perf_counter()  # the read itself may count against the link's share
        return link._receive_view

    def buffer_updated(self, nbytes: int) -> None:
        link = self._link
        link._received(bytes(_RECEIVE_BUFFER[:nbytes]), link._read_started)


# The one receive buffer of every stream link (see _StreamProtocol).
_RECEIVE_BUFFER = memoryview(bytearray(RECEIVE_MAX))


class _DatagramProtocol(_LinkProtocol, asyncio.DatagramProtocol):
    """UDP: a "connection" is a connected datagram socket; it is only lost when we close it."""

    def datagram_received(self, data: bytes, addr: object) -> None:
        self._link._received(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the peer may come back; datagrams are not retried.
        self._link._error(f"{self._link.target}: {getattr(exc, 'strerror', None) or exc}")


class Link:
    def __init__(
        self,
        target: Target,
        listener: LinkListener,
        *,
        name: str,
        backoff: Backoff = Backoff(),
        connect_timeout: float = 10.0,
        negotiation_timeout: float = 3.0,
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
        self._datagrams = target.transport is Transport.UDP
        # The fairness budget: what the next read may take, the seconds of the loop this link may still use
        # before it waits (and when that was reckoned), and the timer of such a wait.
        self._receive_view = _RECEIVE_BUFFER
        self._receive_credit = RECEIVE_BURST
        self._receive_at = time.perf_counter()
        self._read_started = 0.0
        self._throttle: asyncio.TimerHandle | None = None

    # -- the port's side

    @property
    def running(self) -> bool:
        return self._task is not None

    @property
    def writable(self) -> bool:
        return self._writable

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"link {self.name}")

    def stop_nowait(self) -> asyncio.Task[None] | None:
        """Disconnect and stop reconnecting, at once: a start() right after begins a new connection."""
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
        session = self._session
        transport = self._transport
        if transport is None or session is None:
            raise RuntimeError("send() while not connected")
        if self._datagrams:
            self._write(session.encode(data))
        else:
            transport.write(session.encode(data))
        self.stats.bytes_to_remote += len(data)

    def apply_settings(self, settings: LineSettings) -> None:
        self._settings = settings
        if self._transport is not None and self._session is not None and self._session.negotiated:
            self._write(self._session.settings(settings))

    def purge(self, *, receive: bool, transmit: bool) -> None:
        if self._transport is not None and self._session is not None and self._session.negotiated:
            self._write(self._session.purge(receive, transmit))

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
        return transport.get_write_buffer_size() + _socket_queue(transport)

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
        self._reading_paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if not self._reading_paused:
            return
        self._reading_paused = False
        if self._throttle is None:
            self._resume_transport()

    def _resume_transport(self) -> None:
        if self._transport is not None and self._transport.is_reading() is False:
            self._transport.resume_reading()

    def status(self) -> dict[str, Any]:
        return {
            "target": str(self.target),
            "state": self.state.value,
            "com_port": self.remote.com_port,
            "signature": self.remote.signature,
            "remote_settings": self.remote.settings_json(),
            "suspended": self.remote.suspended,
            "signals": {"dtr": self._lines.dtr, "rts": self._lines.rts,
                        **{k: getattr(self.remote.modem, k) for k in ("cts", "dsr", "dcd", "ri")}},
            "line_errors": dict(self.remote.line_errors),
            "bytes_to_remote": self.stats.bytes_to_remote,
            "bytes_from_remote": self.stats.bytes_from_remote,
            "connects": self.stats.connects,
            "reconnects": self.stats.reconnects,
            "last_error": self.stats.last_error,
        }

    # -- connection loop

    async def _run(self) -> None:
        attempt = 0
        after_loss = False  # a connection of this run was lost: the next one is a reconnect
        loop = asyncio.get_running_loop()
        try:
            while True:
                started = loop.time()
                reached = await self._connect_once(after_loss)
                after_loss = after_loss or reached
                if reached and loop.time() - started >= _HEALTHY_AFTER:
                    attempt = 0
                delay = self._backoff.delay(attempt)
                attempt += 1
                self._set_state(LinkState.BACKOFF)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
        finally:
            self._drop_transport()

    async def _connect_once(self, after_loss: bool = False) -> bool:
        """One connection's life; returns whether the server was reached (and then lost)."""
        loop = asyncio.get_running_loop()
        self._set_state(LinkState.CONNECTING)
        try:
            _, protocol = await asyncio.wait_for(self._open_transport(), self._connect_timeout)
        except TimeoutError:
            self._drop_transport()
            self._error(f"connect to {self.target}: no answer within {self._connect_timeout:g} s")
            return False
        except OSError as exc:
            self._drop_transport()
            self._error(f"connect to {self.target}: {_reason(exc, self.target.host)}")
            return False
        if after_loss:  # a connect on open, or after a deliberate disconnect, is not a reconnect
            self.stats.reconnects += 1
        self.stats.connects += 1
        log.info("%s: connected to %s", self.name, self.target)
        timer = loop.call_later(self._negotiation_timeout, self._negotiation_timeout_hit)
        self._after_input()
        try:
            exc = await protocol.lost
        finally:
            timer.cancel()
            self._drop_transport()
        self._error(f"connection to {self.target} lost" + (f": {exc}" if exc else " (closed by the server)"))
        return True

    def _connection_made(self, transport: Any) -> None:
        """Called by the protocol before it can deliver a byte: the server may speak first (ser2net
        sends its whole negotiation at accept), so the session must exist from here on."""
        _tune_socket(transport)
        transport.set_write_buffer_limits(_WRITE_HIGH_WATER, _WRITE_LOW_WATER)
        self._transport = transport
        self._socket_ok = True
        self.remote = RemoteState(line_errors=self.remote.line_errors)  # counts live as long as the port
        self._session = self._new_session()
        if self._reading_paused:
            transport.pause_reading()
        self._write(self._session.start(self._current_settings()))

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
                lambda: _DatagramProtocol(self), remote_addr=(self.target.host, self.target.port))
        return await loop.create_connection(lambda: _StreamProtocol(self), self.target.host, self.target.port)

    def _new_session(self) -> Session:
        if self.target.transport is Transport.RFC2217:
            owner = SessionOwner(settings=self._current_settings, lines=lambda: self._lines,
                                 modem_changed=self._modem_changed)
            return Rfc2217Session(self.remote, self.name, owner)
        return RawSession()

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
        if decoded - decoding > _UNCHARGED or len(data) >= len(self._receive_view):
            self._account(len(data), decoding, decoded, read_started)

    def _account(self, size: int, decoding: float, decoded: float, read_started: float | None) -> None:
        """Charge a read to this link's share of the loop, and size the next read by what decoding cost.

        A read that filled the buffer (the server has more waiting: the link could take the whole loop) is
        charged its read and its decoding, any other read its decoding.  What a read delivers is not
        charged: the ports' back-pressure bounds it.  A port's round trips (short reads) and a healthy
        stream (64 KiB reads of plain data, a few hundred a second) stay far below their share; a server
        that floods commands reaches it and waits."""
        now = time.perf_counter()
        cost = decoded - decoding
        view = self._receive_view
        full = size >= len(view)
        if cost > RECEIVE_SLICE:
            wanted = max(RECEIVE_MIN, int(size * RECEIVE_SLICE / cost))
            if wanted < len(view):
                self._receive_view = _RECEIVE_BUFFER[:wanted]
        elif full and len(view) < RECEIVE_MAX and cost < RECEIVE_SLICE / 2:
            self._receive_view = _RECEIVE_BUFFER[:len(view) * 2]
        if full and read_started is not None:
            cost = decoded - read_started
        credit = self._receive_credit + (now - self._receive_at) * RECEIVE_SHARE
        self._receive_credit = (RECEIVE_BURST if credit > RECEIVE_BURST else credit) - cost
        self._receive_at = now
        if self._receive_credit < 0 and self._throttle is None and self._transport is not None:
            # Wait until half a burst has built up again: a few long waits, not a pause per read.
            wait = (RECEIVE_BURST / 2 - self._receive_credit) / RECEIVE_SHARE
            if not self._reading_paused:
                self._transport.pause_reading()
            self._throttle = asyncio.get_running_loop().call_later(wait, self._unthrottle)

    def _unthrottle(self) -> None:
        self._throttle = None
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
            return
        if self._datagrams:
            view = memoryview(data)  # slices of a view: no copy per datagram
            for start in range(0, len(data), DATAGRAM_SIZE):
                transport.sendto(view[start:start + DATAGRAM_SIZE])  # type: ignore[attr-defined]
        else:
            transport.write(data)

    def _drop_transport(self) -> None:
        transport, self._transport = self._transport, None
        self._session = None
        if transport is not None:
            transport.abort()
        self._update_writable()

    def _set_state(self, state: LinkState) -> None:
        if state is not self.state:
            self.state = state
            self._listener.link_changed()

    def _error(self, message: str) -> None:
        if message != self.stats.last_error:
            log.warning("%s: %s", self.name, message)
        self.stats.last_error = message


def _reason(exc: OSError, host: str) -> str:
    # getaddrinfo's codes are negative and os.strerror() knows none of them ("Unknown error -2").
    if isinstance(exc, socket.gaierror):
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)):
            return f"cannot resolve host {host}"
        return f"cannot resolve host {host} ({str(exc.strerror or exc).lower()})"
    # asyncio's "Connect call failed (addr)" hides the errno's own words ("Connection refused").
    if exc.errno:
        return os.strerror(exc.errno)
    return str(exc)


def _socket_queue(transport: asyncio.BaseTransport) -> int:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")  # SIOCOUTQ for a socket
    except OSError:
        return 0
    return int.from_bytes(raw, sys.byteorder)


def _tune_socket(transport: asyncio.BaseTransport) -> None:
    """Low latency for interactive serial traffic, keepalives so a dead peer is noticed, and a fixed
    send buffer: Linux would grow it to megabytes (tcp_wmem) towards a server that drains at serial
    speed, and a program's write() would return long before its bytes could reach the UART."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_SEND_BUFFER)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


__all__ = ["Backoff", "FlowControl", "Link", "LinkListener", "LinkState", "LinkStats", "RemoteState"]
