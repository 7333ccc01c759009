"""What goes on the wire per transport: a session turns the port's bytes, settings and lines into
bytes for the socket and the server's bytes into data and replies.  :class:`RawSession` passes bytes
through; :class:`Rfc2217Session` wraps the sans-I/O codec in :mod:`vcom.rfc2217` and keeps the bounds
a server may not go past.  No sockets here."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .. import rfc2217
from ..ratelog import RateLog
from ..settings import LineSettings, Signals
from .state import LINE_ERRORS, LINESTATE_MASK, MODEMSTATE_MASK, Lines, RemoteState

log = logging.getLogger("vcom.link")
_problems = RateLog(log)

# What a server may make vcom hold for it: answers to its requests that it does not read (beyond the data's
# own high-water mark), and telnet commands within COMMAND_WINDOW seconds.  Past either it is disconnected.
CONTROL_BACKLOG = 64 * 1024
COMMAND_LIMIT = 10_000
COMMAND_WINDOW = 10.0
# The link's write buffer: past this the port stops reading its pty.
WRITE_HIGH_WATER = 64 * 1024

# How long a receive purge waits for the server's answer before data flows again (a server that never
# answers PURGE-DATA is then not waited for again on that connection).
PURGE_ANSWER_TIMEOUT = 0.5

# The link's buffer holds data up to the high-water mark plus one read of the port's that crosses it; beyond
# that only answers the server asked for and does not read can be there.
_CONTROL_LIMIT = 2 * WRITE_HIGH_WATER + CONTROL_BACKLOG


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

    @property
    def relayable(self) -> bool:
        """Data both ways is only IAC doubling from here on (vcom.port.express may move it), until a command
        comes: no command half-read, no purge awaiting its answer, no CR NUL to undo."""
        ...

    def purge_unanswered(self) -> None: ...


class RawSession:
    """Raw TCP: bytes are bytes; there is nowhere to send settings (nor a purge to wait for)."""

    negotiated = True
    awaiting_purge = False
    relayable = True

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


class SettlingSession(RawSession):
    """Raw TCP over TLS 1.3 right after the handshake: no data until the server has had time to refuse our
    certificate (see :meth:`vcom.link.handshake.LinkTls.connected`), or has sent data, which it would not
    have done then."""

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
        self._sent_settings: LineSettings | None = None  # what the commands sent last carried; None: nothing
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
        sent, self._sent_settings = self._sent_settings, settings
        if sent == settings:
            return b""
        return b"".join(self._codec.send(c) for c in rfc2217.changed_commands(sent, settings))

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

    @property
    def relayable(self) -> bool:
        return self.negotiated and not self._purges and self._codec.plain_data_follows

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
                self._sent_settings = None
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
