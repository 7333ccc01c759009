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
import errno
import fcntl
import logging
import os
import random
import socket
import ssl
import struct
import sys
import termios
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import rfc2217
from .config import ConfigError
from .ratelog import RateLog
from .settings import FlowControl, LineSettings, Signals
from .target import Target, Transport
from .tls import HANDSHAKE_TIMEOUT, ClientSide, ClientTls, handshake_failure

log = logging.getLogger(__name__)
# Problems a server can repeat without end (refusals, junk, being hung up on): a few lines a minute per port.
_problems = RateLog(log)

# A connection that stayed up this long counts as healthy: the back-off restarts from its shortest delay.
_HEALTHY_AFTER = 10.0
# After a healthy connection is lost, the first retries wait at most this long (the network may be back in a
# moment: a switch rebooting, a cable replugged), for this long, before the back-off doubles towards retry_max.
QUICK_RETRY = 2.0
QUICK_RETRY_FOR = 60.0
PEER_TIMEOUT = 15.0  # default seconds a server may leave vcom without an answer before the connection is dead
# While data waits for the server's acknowledgement the link looks this often (at most) whether the server
# still answers (see _ack_check).
ACK_CHECK_INTERVAL = 3.0
# What a server may make vcom hold for it: answers to its requests that it does not read (beyond the data's
# own high-water mark), and telnet commands within COMMAND_WINDOW seconds.  Past either it is disconnected.
CONTROL_BACKLOG = 64 * 1024
COMMAND_LIMIT = 10_000
COMMAND_WINDOW = 10.0
_WRITE_HIGH_WATER = 64 * 1024
SOCKET_SEND_BUFFER = 64 * 1024
# UDP payload per datagram: small enough to cross any path (IPv6 minimum MTU 1280) without fragmentation,
# where one lost fragment would lose the whole datagram.
DATAGRAM_SIZE = 1024
_WRITE_LOW_WATER = 16 * 1024
# How long a receive purge waits for the server's answer before data flows again (a server that never
# answers PURGE-DATA is then not waited for again on that connection).
PURGE_ANSWER_TIMEOUT = 0.5
# The link's buffer holds data up to the high-water mark plus one read of the port's that crosses it; beyond
# that only answers the server asked for and does not read can be there.
_CONTROL_LIMIT = 2 * _WRITE_HIGH_WATER + CONTROL_BACKLOG
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
    purged_bytes: int = 0  # arrived after a program's input flush, from before it: discarded
    lost_bytes: int = 0  # handed to the link, not acknowledged by the server when its connection died
    timeouts: int = 0  # connections ended because the server did not answer within the peer timeout
    bound_disconnects: int = 0  # connections vcom closed because the server went past a bound


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
    quick: float = QUICK_RETRY  # the longest wait right after a healthy connection was lost
    quick_for: float = QUICK_RETRY_FOR

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

    @property
    def awaiting_purge(self) -> bool: ...

    def purge_unanswered(self) -> None: ...


class RawSession:
    """Raw TCP: bytes are bytes; there is nowhere to send settings (nor a purge to wait for)."""

    negotiated = True
    awaiting_purge = False

    def purge_unanswered(self) -> None:
        pass

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
    discarded: Callable[[int], None] = lambda count: None  # data dropped because a purge had not been answered
    backlog: Callable[[], int] = lambda: 0  # bytes written to the server that it has not taken yet
    violation: Callable[[str], None] = lambda reason: None  # the server went past a bound: disconnect it
    clock: Callable[[], float] = time.monotonic


class _SettlingSession(RawSession):
    """Raw TCP over TLS 1.3 right after the handshake: no data until the server has had time to refuse our
    certificate (see :meth:`Link._tls_connected`), or has sent data, which it would not have done then."""

    def __init__(self) -> None:
        self.negotiated = False

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        self.negotiated = True
        return data, b""

    def negotiation_timed_out(self) -> bytes:
        self.negotiated = True
        return b""


class Rfc2217Session:
    """RFC 2217 client role on top of the sans-I/O codec.

    ``receive`` returns (user data, bytes to send back); answers and
    notifications update :attr:`remote`.  Commands are only sent once the
    server agreed to COM-PORT-OPTION; a server that refuses it gets one
    warning and carries plain data (RFC 2217 section 2: without the option the
    connection is an ordinary telnet one).
    """

    def __init__(self, remote: RemoteState, name: str, owner: SessionOwner) -> None:
        self._codec = rfc2217.Connection(rfc2217.Role.CLIENT, command_limit=COMMAND_LIMIT)
        self._counting_since = owner.clock()
        self._remote = remote
        self._name = name
        self._owner = owner
        self._settings = LineSettings()
        self._sent: list[Any] = []  # last value sent per command, to send only changes
        self._sent_lines = Lines()
        self.negotiated = False
        # PURGE-DATA sent and not answered yet, oldest first: whether each discards the receive buffer.
        # RFC 2217 answers in order, in the data stream: data before the answer left the remote UART
        # before the purge and is what the program flushed.
        self._purges: deque[bool] = deque()
        self.answers_purge: bool | None = None  # learned per connection

    def start(self, settings: LineSettings) -> bytes:
        self._settings = settings
        return self._codec.initiate()

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        events = self._codec.receive_data(data)
        if not self._purges and len(events) == 1 and type(events[0]) is rfc2217.Data:
            # A busy link's every read: the payload goes on as the codec made it, without a copy.
            return events[0].data, self._codec.data_to_send()
        payload = []
        replies = [b""]  # the codec's own answers (option negotiation) go first
        for event in events:
            if type(event) is rfc2217.Data:
                if any(self._purges):
                    self._owner.discarded(len(event.data))  # received before the purge: flushed
                else:
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
        if self.answers_purge is not False:
            self._purges.append(receive)
        return self._codec.send(rfc2217.PurgeData(which))

    @property
    def awaiting_purge(self) -> bool:
        """A receive purge is unanswered: incoming data is being discarded."""
        return any(self._purges)

    def purge_unanswered(self) -> None:
        """The server did not answer PURGE-DATA in time: stop discarding, and do not wait on it again."""
        if self._purges:
            self._purges.clear()
            if self.answers_purge is None:
                log.warning("%s: server does not answer PURGE-DATA; after a flush, data it sent before the flush "
                            "may still reach the program", self._name)
            self.answers_purge = False

    def negotiation_timed_out(self) -> bytes:
        if self.negotiated:
            return b""
        _problems.warning((self._name, "no-negotiation"), "%s: server did not negotiate COM-PORT-OPTION; "
                          "carrying plain data, settings are not sent", self._name)
        self.negotiated = True
        return b""

    def _event(self, event: object) -> bytes:
        backlog = self._owner.backlog()
        if backlog > _CONTROL_LIMIT:
            # Every answer is written whether or not the server reads: one that keeps asking and never reads
            # would make vcom hold its answers without end.
            self._owner.violation(f"the server does not read what vcom sends ({backlog:,} bytes waiting) "
                                  "and keeps sending requests")
            return b""
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
                    _problems.warning((self._name, "refused"), "%s: server refused COM-PORT-OPTION (RFC 2217); "
                                      "carrying plain data, line settings stay as the server has them", self._name)
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
            case rfc2217.PurgeData():
                if self._purges:
                    self._purges.popleft()
                    self.answers_purge = True
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
                _problems.info((self._name, "ignored"), "%s: ignored from server: %s", self._name, message)
            case rfc2217.LimitExceeded(what="subnegotiation", message=message):
                self._owner.violation(f"the server sent a {message.removesuffix(' skipped')}")
            case rfc2217.LimitExceeded(what="commands"):
                self._commands_counted()
        return b""

    def _commands_counted(self) -> None:
        """COMMAND_LIMIT telnet commands since the count started: too many if that took under COMMAND_WINDOW."""
        now = self._owner.clock()
        took = now - self._counting_since
        if took < COMMAND_WINDOW:
            self._owner.violation(f"the server sent {COMMAND_LIMIT:,} telnet commands within {took:.1f} s")
        self._counting_since = now
        self._codec.restart_command_count()

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
        # The socket is still open here (asyncio closes it after this call): what it held unacknowledged
        # can still be read.
        self._link._connection_lost()
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
        self.peer_timeout = peer_timeout  # 0: the kernel's own limits (minutes)
        self._settings = LineSettings()
        self._lines = Lines()
        self._task: asyncio.Task[None] | None = None
        self._transport: asyncio.Transport | None = None
        self._session: Session | None = None
        self._socket_ok = True
        self._reading_paused = False
        self._writable = False
        self._wake = asyncio.Event()
        self._tls = ClientSide(target.tls_options or ClientTls(), target.host, name) if target.tls else None
        self._tls_handshake_timeout = tls_handshake_timeout
        self._tls_settle: asyncio.TimerHandle | None = None
        self._tls_handshake_at = 0.0  # loop time of the last connect attempt, then of its completed handshake
        self._tls_bytes_at_handshake = 0
        self._sent_at_connect = 0  # bytes_to_remote when this connection began
        self._loss: int | None = None  # measured as the connection went
        self._violation_reason: str | None = None
        self._ack_timer: asyncio.TimerHandle | None = None
        self._unanswered = False  # the ACK check gave up on the connection
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
            if self._ack_timer is None and self.peer_timeout:
                self._ack_timer = asyncio.get_running_loop().call_later(self._ack_interval(), self._ack_check)
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
            "purged_bytes": self.stats.purged_bytes,
            "last_error": self.stats.last_error,
            "tls": self._tls.status() if self._tls is not None else None,
            "peer_timeout": self.peer_timeout,
            "timeouts": self.stats.timeouts,
            "bound_disconnects": self.stats.bound_disconnects,
            # The port adds what a closed program wrote and could not be sent, and shows the sum as lost_bytes.
            "lost_at_disconnect": self.stats.lost_bytes,
        }

    def reload_tls(self) -> str | None:
        """Read the TLS files again for the next handshake (the connection up now stays); the reason if they
        cannot be used, in which case the ones read before stay in use."""
        return self._tls.reload() if self._tls is not None else None

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
                if reached and loop.time() - started >= _HEALTHY_AFTER:
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
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
        finally:
            self._drop_transport()

    async def _connect_once(self, after_loss: bool = False) -> bool:
        """One connection's life; returns whether the server was reached (and then lost)."""
        loop = asyncio.get_running_loop()
        self._set_state(LinkState.CONNECTING)
        # The TLS handshake has its own bound (and message), on top of the TCP connect's.
        bound = self._connect_timeout + (self._tls_handshake_timeout if self._tls is not None else 0)
        try:
            _, protocol = await asyncio.wait_for(self._open_transport(), bound)
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
        self._error(self._loss_reason(exc))
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
        self._loss = _unacknowledged(transport, self.stats.bytes_to_remote - self._sent_at_connect)

    def _violation(self, reason: str) -> None:
        """The server went past a bound: close the connection (retried after the back-off), say why once."""
        transport = self._transport
        if transport is None or self._violation_reason is not None:
            return
        self._violation_reason = reason
        self.stats.bound_disconnects += 1
        # What waits for the server is given up with the connection.
        self._loss = transport.get_write_buffer_size() + _socket_queue(transport)
        asyncio.get_running_loop().call_soon(self._abort_if, transport)

    def _abort_if(self, transport: asyncio.BaseTransport) -> None:
        # Not from inside the session's own callback: abort once the current read has been handled.
        if transport is self._transport:
            transport.abort()

    def _connection_made(self, transport: Any) -> None:
        """Called by the protocol before it can deliver a byte: the server may speak first (ser2net
        sends its whole negotiation at accept), so the session must exist from here on.  Over TLS this is
        after the handshake, the server's certificate verified."""
        _tune_socket(transport, self.peer_timeout)
        transport.set_write_buffer_limits(_WRITE_HIGH_WATER, _WRITE_LOW_WATER)
        self._transport = transport
        self._sent_at_connect = self.stats.bytes_to_remote
        self._loss = None
        self._violation_reason = None
        self._unanswered = False
        self._socket_ok = True
        self.remote = RemoteState(line_errors=self.remote.line_errors)  # counts live as long as the port
        settle = self._tls_connected(transport) if self._tls is not None else None
        self._session = self._new_session(settling=settle is not None)
        if settle is not None:
            self._tls_settle = asyncio.get_running_loop().call_later(settle, self._negotiation_timeout_hit)
        if self._reading_paused:
            transport.pause_reading()
        self._write(self._session.start(self._current_settings()))

    def _tls_connected(self, transport: Any) -> float | None:
        """Note the handshake; the seconds raw data must wait before it may flow (None: it need not).

        TLS 1.3 lets the client finish its handshake before the server has checked the client: a server
        that refuses our certificate (or our lack of one) says so one round trip later.  RFC 2217 data
        waits for the server's negotiation anyway; raw TCP has no such answer, so its first bytes wait for
        either the server's first bytes or twice the time the connect and handshake took (at least 50 ms,
        at most 2 s), rather than be lost to a server that is about to close."""
        assert self._tls is not None
        if self._tls_settle is not None:
            self._tls_settle.cancel()
            self._tls_settle = None
        ssl_object = transport.get_extra_info("ssl_object")
        session = self._tls.connected(ssl_object, lambda: self._transport is transport)
        loop = asyncio.get_running_loop()
        took, self._tls_handshake_at = loop.time() - self._tls_handshake_at, loop.time()
        self._tls_bytes_at_handshake = self.stats.bytes_from_remote
        log.info("%s: TLS %s %s with %s", self.name, session.version, session.cipher,
                 session.peer.subject if session.peer else "a server without certificate")
        if self.target.transport is not Transport.TCP or session.version != "TLSv1.3":
            return None
        return min(max(2 * took, 0.05), 2.0)

    def _loss_detail(self, exc: Exception | None) -> str:
        """Why a connection ended, as the end of a sentence; over TLS, what a handshake failure means."""
        if self._tls is not None and isinstance(exc, ssl.SSLError):
            return ": " + handshake_failure(exc, "server", server_name=self._tls.server_name,
                                            presented_cert=bool(self._tls.options.cert))
        if exc is not None:
            return f": {exc}"
        recent = asyncio.get_running_loop().time() - self._tls_handshake_at < 2.0
        silent = self.remote.com_port is None and self.stats.bytes_from_remote == self._tls_bytes_at_handshake
        if self._tls is not None and recent and silent:
            doubt = ("it may not accept our client certificate" if self._tls.options.cert
                     else "it may require a client certificate (--tls-cert, --tls-key)")
            return f": closed by the server right after the TLS handshake; {doubt}"
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
                lambda: _DatagramProtocol(self), remote_addr=(self.target.host, self.target.port))
        if self._tls is not None:
            return await self._open_tls(loop, self._tls)
        return await loop.create_connection(lambda: _StreamProtocol(self), self.target.host, self.target.port)

    async def _open_tls(self, loop: asyncio.AbstractEventLoop, tls: ClientSide) -> tuple[Any, Any]:
        """TCP, then the handshake on that socket: each has its own bound and its own message.  The protocol
        sees the connection only once the server's certificate is verified, so nothing is sent before."""
        try:
            context = tls.context()
        except ConfigError as exc:
            raise TlsFailure(f"TLS files: {exc}") from None
        self._tls_handshake_at = loop.time()
        sock = await _connect_socket(loop, self.target.host, self.target.port)
        timeout = self._tls_handshake_timeout
        try:
            async with asyncio.timeout(timeout):
                # asyncio's own handshake bound is a backstop: ours comes first and is a TimeoutError.
                return await loop.create_connection(
                    lambda: _StreamProtocol(self), sock=sock, ssl=context, server_hostname=tls.server_name,
                    ssl_handshake_timeout=timeout + 1)
        except (OSError, EOFError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            sock.close()
            raise TlsFailure("TLS: " + handshake_failure(exc, "server", server_name=tls.server_name, timeout=timeout,
                                                         presented_cert=bool(tls.options.cert))) from None

    def _new_session(self, *, settling: bool = False) -> Session:
        if self.target.transport is Transport.RFC2217:
            owner = SessionOwner(settings=self._current_settings, lines=lambda: self._lines,
                                 modem_changed=self._modem_changed, discarded=self._purged, backlog=self._backlog,
                                 violation=self._violation)
            return Rfc2217Session(self.remote, self.name, owner)
        return _SettlingSession() if settling else RawSession()

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
            if self._ack_timer is None and self.peer_timeout:
                self._ack_timer = asyncio.get_running_loop().call_later(self._ack_interval(), self._ack_check)

    def _ack_interval(self) -> float:
        return min(ACK_CHECK_INTERVAL, max(self.peer_timeout / 4, 0.25))

    def _ack_check(self) -> None:
        """A dead server with data on its way: abort after ``peer_timeout`` without an acknowledgement.

        TCP_USER_TIMEOUT would do this in the kernel, but Linux applies it to a closed receive window too,
        so a live server that takes nothing for a while (its UART held off by flow control: a printer out
        of paper) would be cut off and what it had not taken lost.  Here a connection counts as dead only
        while the kernel is retransmitting or its window probes go unanswered (tcp_info's retransmits and
        probes) and the last acknowledgement is older than the peer timeout.  A server that answers its
        window probes is alive however long it keeps the window shut; one that dies while it does is
        noticed at its second unanswered probe (the kernel spaces them up to 2 minutes apart).  Nothing in
        flight: keepalive watches a quiet connection."""
        self._ack_timer = None
        transport = self._transport
        if transport is None or not self.peer_timeout:
            return
        if not transport.get_write_buffer_size() and not _socket_queue(transport):
            return
        silence = _unanswered_for(transport)
        if silence is not None and silence >= self.peer_timeout:
            self._unanswered = True
            transport.abort()
            return
        self._ack_timer = asyncio.get_running_loop().call_later(self._ack_interval(), self._ack_check)

    def _drop_transport(self) -> None:
        transport, self._transport = self._transport, None
        self._session = None
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
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


class TlsFailure(OSError):
    """A TLS connection that could not be made, in vcom's words (no errno)."""


async def _connect_socket(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
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


# struct tcp_info (linux/tcp.h): tcpi_retransmits and tcpi_probes (__u8: unanswered retransmissions and
# window probes in a row), tcpi_last_ack_recv (__u32, ms since the last acknowledgement), tcpi_bytes_acked
# (__u64, Linux 4.2 and later).
_TCPI_RETRANSMITS = 2
_TCPI_PROBES = 3
_TCPI_LAST_ACK_RECV = 56
_TCPI_BYTES_ACKED = 120


def _unanswered_for(transport: asyncio.BaseTransport) -> float | None:
    """Seconds since the server last acknowledged anything, while the kernel waits for an answer to a
    retransmission or to window probes; None while it waits for nothing (or cannot say)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCPI_LAST_ACK_RECV + 4)
    except OSError:
        return None
    # One unanswered window probe means little: a receiver answers out-of-window segments at most twice a
    # second (tcp_invalid_ratelimit), and probes start 0.2 s apart.  Two in a row, or a retransmission
    # (the window was open), and the server is not answering.
    if len(info) < _TCPI_LAST_ACK_RECV + 4 or not (info[_TCPI_RETRANSMITS] or info[_TCPI_PROBES] >= 2):
        return None
    (since_ms,) = struct.unpack_from("=I", info, _TCPI_LAST_ACK_RECV)
    return since_ms / 1000


def _unacknowledged(transport: asyncio.BaseTransport, handed: int) -> int:
    """Bytes of a connection that just died that the server never acknowledged: the socket's queue
    (SIOCOUTQ still counts them after the kernel gave up), or, when more, what was handed to the link
    less what the server acknowledged (tcp_info), which also covers what asyncio had not written yet
    (it empties its buffer before the protocol hears of the loss).  The second figure counts telnet
    commands as acknowledged data, so it never overstates."""
    queued = _socket_queue(transport)
    sock = transport.get_extra_info("socket")
    if sock is None:
        return queued
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCPI_BYTES_ACKED + 8)
    except OSError:
        return queued
    if len(info) < _TCPI_BYTES_ACKED + 8:
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


def _tune_socket(transport: asyncio.BaseTransport, peer_timeout: float = PEER_TIMEOUT) -> None:
    """Low latency for interactive serial traffic, a fixed send buffer (Linux would grow it to megabytes
    (tcp_wmem) towards a server that drains at serial speed, and a program's write() would return long
    before its bytes could reach the UART), and a dead peer noticed within ``peer_timeout``:

    * keepalive probes while nothing is waiting to be sent, so a quiet connection whose server has gone
      silent (a partition, a server that lost power) ends;
    * data that stays unacknowledged is watched by the link itself (Link._ack_check), where the kernel's
      own limit (tcp_retries2) would keep retransmitting for about a quarter of an hour."""
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


__all__ = ["PEER_TIMEOUT", "Backoff", "FlowControl", "Link", "LinkListener", "LinkState", "LinkStats", "RemoteState"]
