"""RFC 2217 (telnet COM-PORT-OPTION) as a protocol core without I/O.

The design follows h11: a :class:`Connection` is fed the bytes that arrived
(:meth:`Connection.receive_data`) and hands back typed events; it is given
commands (:meth:`Connection.send`, :meth:`Connection.send_data`) and hands
back the bytes to write.  It owns no socket, no clock and no task, so the
same object serves an asyncio link, a blocking test and a fuzzer, and every
behaviour can be tested by comparing bytes.

One class, two roles.  RFC 2217 is symmetric on the wire except that an
access server answers a command with its code plus 100 (RFC 2217, "Com Port
Option: Introduction").  Each command therefore has one event class used for
both directions: a client receiving ``SetBaudRate(9600)`` learns the rate the
server has in force, a server receiving it learns what the client asks for.

Layers, bottom up:

* Telnet framing (RFC 854/855): IAC escaping and a state machine that
  resumes anywhere, so a split of the input never changes the events.  Data
  is taken in runs, not bytes: a read without IAC is one Data event as it
  came, and doubled IACs (0xFF data, common in firmware images) are undone
  in bulk; only the bytes of commands go one at a time.  Subnegotiations run
  to ``IAC SE`` (never a fixed length, because values may contain a doubled
  0xFF) and are bounded in size.
* Option negotiation (RFC 1143 "Q method", without the queue since this
  codec never asks to disable an option): a request is answered only when it
  changes the option's state, which is what prevents negotiation loops with
  peers that repeat themselves.
* COM-PORT-OPTION commands (RFC 2217) decoded into frozen dataclasses.

The codec tolerates rather than raises: whatever the peer sends that it
cannot use becomes a :class:`ProtocolError` event and parsing goes on.  Only
a local programming error (sending a value that does not fit) raises.  Known
peer habits are accepted as they are: 8-byte SET-BAUDRATE answers (sredird),
NOTIFY instead of a mask answer (ser2net), an empty NOTIFY as a poll and
commands without a WILL 44 first (pyserial's client).  Answers are reported
as "the value in force", never matched against what was asked: that is the
caller's business, with its own clock.

Conversions between :mod:`vcom.settings` and RFC 2217 codes live at the end
of this module and nowhere else.
"""

from __future__ import annotations

import enum
import re
from dataclasses import astuple, dataclass

from .settings import FlowControl, LineSettings, Parity, Signals, StopBits

try:  # C loops for the data path, built at install time where a C compiler and Python's headers are
    from . import _speedups
except ImportError:  # the same results from the Python below
    _speedups = None  # type: ignore[assignment]

# -- Telnet (RFC 854) -------------------------------------------------------

IAC = 255
DONT = 254
DO = 253
WONT = 252
WILL = 251
SB = 250
GA = 249
EL = 248
EC = 247
AYT = 246
AO = 245
IP = 244
BRK = 243
DM = 242
NOP = 241
SE = 240

# Options.  BINARY is RFC 856, SGA RFC 858, ECHO RFC 857, COM-PORT RFC 2217.
BINARY = 0
ECHO = 1
SGA = 3
COM_PORT_OPTION = 44

# Two-byte telnet commands with no meaning for a serial link; RFC 854 makes
# them legal anywhere in the stream, so they are consumed silently.
_IGNORED_COMMANDS = frozenset({NOP, DM, BRK, IP, AO, AYT, EC, EL, GA})

_IAC_BYTE = bytes([IAC])
_IAC_IAC = _IAC_BYTE * 2
_IAC_RUN = re.compile(rb"\xff+")
_IAC_RUN_OF_4 = _IAC_BYTE * 4
_CR = 0x0D
_NUL = 0x00

# RFC 2217: "the Access Server ... responds with the command code plus 100".
SERVER_OFFSET = 100


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class Command(enum.IntEnum):
    """COM-PORT-OPTION command codes as a client sends them (RFC 2217)."""

    SIGNATURE = 0
    SET_BAUDRATE = 1
    SET_DATASIZE = 2
    SET_PARITY = 3
    SET_STOPSIZE = 4
    SET_CONTROL = 5
    NOTIFY_LINESTATE = 6
    NOTIFY_MODEMSTATE = 7
    FLOWCONTROL_SUSPEND = 8
    FLOWCONTROL_RESUME = 9
    SET_LINESTATE_MASK = 10
    SET_MODEMSTATE_MASK = 11
    PURGE_DATA = 12


class Control(enum.IntEnum):
    """SET-CONTROL values (RFC 2217, "SET-CONTROL")."""

    FLOW_QUERY = 0
    FLOW_NONE = 1  # outbound, or both directions
    FLOW_XONXOFF = 2
    FLOW_HARDWARE = 3
    BREAK_QUERY = 4
    BREAK_ON = 5
    BREAK_OFF = 6
    DTR_QUERY = 7
    DTR_ON = 8
    DTR_OFF = 9
    RTS_QUERY = 10
    RTS_ON = 11
    RTS_OFF = 12
    INBOUND_FLOW_QUERY = 13
    INBOUND_FLOW_NONE = 14
    INBOUND_FLOW_XONXOFF = 15
    INBOUND_FLOW_HARDWARE = 16
    FLOW_DCD = 17
    FLOW_DTR = 18
    FLOW_DSR = 19


class Purge(enum.IntEnum):
    RECEIVE = 1
    TRANSMIT = 2
    BOTH = 3


class LineState(enum.IntFlag):
    TIMEOUT = 0x80
    TSRE = 0x40  # transfer shift register empty
    THRE = 0x20  # transfer holding register empty
    BREAK = 0x10
    FRAMING_ERROR = 0x08
    PARITY_ERROR = 0x04
    OVERRUN = 0x02
    DATA_READY = 0x01


class ModemState(enum.IntFlag):
    CD = 0x80
    RI = 0x40
    DSR = 0x20
    CTS = 0x10
    DELTA_CD = 0x08
    TRAILING_RI = 0x04
    DELTA_DSR = 0x02
    DELTA_CTS = 0x01


# -- Events -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Data:
    """User data, IAC-unescaped; adjacent bytes of one receive_data call are joined."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Signature:
    """Free text naming the peer; empty text asks for the peer's signature."""

    text: str


@dataclass(frozen=True, slots=True)
class SetBaudRate:
    baud: int  # 0 = query


@dataclass(frozen=True, slots=True)
class SetDataSize:
    bits: int  # 0 = query


@dataclass(frozen=True, slots=True)
class SetParity:
    parity: int  # RFC code: 0 query, 1 none, 2 odd, 3 even, 4 mark, 5 space


@dataclass(frozen=True, slots=True)
class SetStopSize:
    stop: int  # RFC code: 0 query, 1 one, 2 two, 3 one and a half


@dataclass(frozen=True, slots=True)
class SetControl:
    value: int  # a Control member when known, else the raw int


@dataclass(frozen=True, slots=True)
class NotifyLineState:
    state: LineState


@dataclass(frozen=True, slots=True)
class NotifyModemState:
    state: ModemState


@dataclass(frozen=True, slots=True)
class FlowControlSuspend:
    pass


@dataclass(frozen=True, slots=True)
class FlowControlResume:
    pass


@dataclass(frozen=True, slots=True)
class SetLineStateMask:
    mask: LineState


@dataclass(frozen=True, slots=True)
class SetModemStateMask:
    mask: ModemState


@dataclass(frozen=True, slots=True)
class PurgeData:
    purge: int  # a Purge member when known, else the raw int


@dataclass(frozen=True, slots=True)
class ComPortOption:
    """The peer agreed to (True) or refused (False) COM-PORT-OPTION; sent once per change."""

    enabled: bool


@dataclass(frozen=True, slots=True)
class OptionChange:
    """Another telnet option changed state; ``local`` means the option is ours to perform."""

    option: int
    local: bool
    enabled: bool


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """Something malformed arrived and was skipped."""

    message: str


@dataclass(frozen=True, slots=True)
class LimitExceeded:
    """The peer went past a bound the codec keeps; parsing goes on, the caller decides what follows.

    ``what``: ``"subnegotiation"`` (one that runs past ``endless_subnegotiation`` bytes: a peer that never
    ends it, whose every byte from there on would be swallowed; one merely longer than
    ``max_subnegotiation`` is skipped with a :class:`ProtocolError`) or
    ``"commands"`` (``command_limit`` telnet commands since :meth:`Connection.restart_command_count`:
    the codec has no clock, so whether that many came too fast is for the caller to judge).
    """

    what: str
    message: str


PortCommand = (
    Signature
    | SetBaudRate
    | SetDataSize
    | SetParity
    | SetStopSize
    | SetControl
    | NotifyLineState
    | NotifyModemState
    | FlowControlSuspend
    | FlowControlResume
    | SetLineStateMask
    | SetModemStateMask
    | PurgeData
)
Event = Data | PortCommand | ComPortOption | OptionChange | ProtocolError | LimitExceeded

_COMMAND_OF: dict[type, Command] = {
    Signature: Command.SIGNATURE,
    SetBaudRate: Command.SET_BAUDRATE,
    SetDataSize: Command.SET_DATASIZE,
    SetParity: Command.SET_PARITY,
    SetStopSize: Command.SET_STOPSIZE,
    SetControl: Command.SET_CONTROL,
    NotifyLineState: Command.NOTIFY_LINESTATE,
    NotifyModemState: Command.NOTIFY_MODEMSTATE,
    FlowControlSuspend: Command.FLOWCONTROL_SUSPEND,
    FlowControlResume: Command.FLOWCONTROL_RESUME,
    SetLineStateMask: Command.SET_LINESTATE_MASK,
    SetModemStateMask: Command.SET_MODEMSTATE_MASK,
    PurgeData: Command.PURGE_DATA,
}


# -- Command values ---------------------------------------------------------


def _member_or_int(kind: type[enum.IntEnum], value: int) -> int:
    try:
        return kind(value)
    except ValueError:
        return value


# One-byte values, decoded from the byte.  The RFC gives no other length.
_BYTE_COMMANDS = {
    Command.SET_DATASIZE: SetDataSize,
    Command.SET_PARITY: SetParity,
    Command.SET_STOPSIZE: SetStopSize,
    Command.SET_CONTROL: lambda value: SetControl(_member_or_int(Control, value)),
    Command.NOTIFY_LINESTATE: lambda value: NotifyLineState(LineState(value)),
    Command.NOTIFY_MODEMSTATE: lambda value: NotifyModemState(ModemState(value)),
    Command.SET_LINESTATE_MASK: lambda value: SetLineStateMask(LineState(value)),
    Command.SET_MODEMSTATE_MASK: lambda value: SetModemStateMask(ModemState(value)),
    Command.PURGE_DATA: lambda value: PurgeData(_member_or_int(Purge, value)),
}

# pyserial's client polls with an empty NOTIFY-MODEMSTATE: read it as state 0.
_EMPTY_MEANS_ZERO = frozenset({Command.NOTIFY_LINESTATE, Command.NOTIFY_MODEMSTATE})


def _rfc_name(command: Command) -> str:
    return command.name.replace("_", "-")


def _decode_command(command: Command, value: bytes) -> Event:
    """The event for one COM-PORT-OPTION subnegotiation, or why it is unusable.

    Values longer than the RFC's size are read from their first bytes:
    sredird answers SET-BAUDRATE with 8 bytes whose first 4 are the rate.
    """
    if command is Command.SIGNATURE:
        return Signature(value.decode("utf-8", "replace"))
    if command is Command.FLOWCONTROL_SUSPEND:
        return FlowControlSuspend()
    if command is Command.FLOWCONTROL_RESUME:
        return FlowControlResume()
    if command is Command.SET_BAUDRATE:
        if len(value) < 4:
            return ProtocolError(f"SET-BAUDRATE value of {len(value)} bytes, expected 4")
        return SetBaudRate(int.from_bytes(value[:4], "big"))  # network order
    if not value:
        if command in _EMPTY_MEANS_ZERO:
            value = b"\x00"
        else:
            return ProtocolError(f"{_rfc_name(command)} without a value")
    return _BYTE_COMMANDS[command](value[0])


def _uint(value: int, size: int, what: str) -> bytes:
    if not 0 <= value < 1 << (8 * size):
        raise ValueError(f"{what} {value} does not fit in {size} byte(s)")
    return value.to_bytes(size, "big")


def _encode_value(command: PortCommand) -> bytes:
    match command:
        case Signature(text=text):
            return text.encode("utf-8")
        case SetBaudRate(baud=baud):
            return _uint(baud, 4, "baud rate")
        case FlowControlSuspend() | FlowControlResume():
            return b""
        case _:  # every other command carries one byte
            (value,) = astuple(command)
            return _uint(value, 1, type(command).__name__)


def _escape_python(data: bytes) -> bytes:
    # RFC 854: a data byte 255 is sent as IAC IAC; RFC 855 applies the same
    # rule inside subnegotiations, which is why values must be doubled too.
    if data.find(_IAC_RUN_OF_4) < 0:
        return data.replace(_IAC_BYTE, _IAC_IAC)  # returns data itself when there is no IAC
    # Long runs of 0xFF (firmware images): bytes.replace handles every occurrence on its own
    # (under 100 MB/s on all-0xFF data); doubling each run whole keeps it above 1 GB/s.
    parts = []
    pos = 0
    while (at := data.find(_IAC_BYTE, pos)) >= 0:
        end = _IAC_RUN.match(data, at).end()  # type: ignore[union-attr]
        parts += (data[pos:end], data[at:end])
        pos = end
    parts.append(data[pos:])
    return b"".join(parts)


_escape = _speedups.escape if _speedups is not None else _escape_python
# Every IAC IAC of data made one 0xFF, or None when an IAC starts a command or ends the data: what the
# parser below does a slice per 0xFF for, in one pass (None without the C loops).
_undouble = _speedups.undouble if _speedups is not None else None


# -- Option negotiation state (RFC 1143) --------------------------------------


class _Q(enum.Enum):
    """One side of one option.  WANTNO is never needed: we never disable."""

    NO = "no"
    WANTYES = "wantyes"  # we asked, no answer yet
    YES = "yes"


# What each role performs itself (WILL) and lets the peer perform (DO).
# BINARY both ways keeps 8-bit data intact (RFC 856); SGA both ways is what
# every serial server expects; COM-PORT-OPTION is performed by the client
# (RFC 2217: the client sends WILL, the access server answers DO).
_WANTED_LOCAL = {
    Role.CLIENT: frozenset({BINARY, SGA, COM_PORT_OPTION}),
    Role.SERVER: frozenset({BINARY, SGA}),
}
_WANTED_REMOTE = {
    Role.CLIENT: frozenset({BINARY, SGA}),
    Role.SERVER: frozenset({COM_PORT_OPTION, BINARY, SGA}),
}
_OPENING = {
    Role.CLIENT: ((WILL, BINARY), (DO, BINARY), (WILL, SGA), (DO, SGA), (WILL, COM_PORT_OPTION)),
    Role.SERVER: ((DO, COM_PORT_OPTION), (WILL, BINARY), (DO, BINARY), (WILL, SGA), (DO, SGA)),
}


class _Parse(enum.Enum):
    DATA = "data"
    IAC = "iac"  # IAC seen in data
    NEGOTIATE = "negotiate"  # IAC WILL/WONT/DO/DONT seen, option byte next
    SB = "sb"  # inside IAC SB ... IAC SE
    SB_IAC = "sb-iac"  # IAC seen inside a subnegotiation


class _Events:
    """Collects events, joining adjacent data into one Data event (without a copy when it is one piece)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._data: list[bytes] = []

    def data(self, chunk: bytes) -> None:
        self._data.append(chunk)

    def add(self, event: Event) -> None:
        self._flush()
        self.events.append(event)

    def finish(self) -> list[Event]:
        self._flush()
        return self.events

    def _flush(self) -> None:
        if self._data:
            self.events.append(Data(self._data[0] if len(self._data) == 1 else b"".join(self._data)))
            self._data.clear()


# -- The connection -----------------------------------------------------------


class Connection:
    """Telnet and COM-PORT-OPTION state for one end of one connection."""

    def __init__(self, role: Role, *, max_subnegotiation: int = 1024, endless_subnegotiation: int = 65536,
                 command_limit: int | None = None) -> None:
        if max_subnegotiation < 2:
            raise ValueError("max_subnegotiation must leave room for an option and a command")
        if command_limit is not None and command_limit < 1:
            raise ValueError("command_limit must be at least 1")
        self.role = role
        self._max_subnegotiation = max_subnegotiation
        self._endless_subnegotiation = max(endless_subnegotiation, max_subnegotiation)
        self._subneg_skipped = 0  # length so far of a subnegotiation that went past the limit
        self._command_limit = command_limit
        self._commands = 0  # telnet commands (IAC IAC is data) since restart_command_count()
        self._local: dict[int, _Q] = {}
        self._remote: dict[int, _Q] = {}
        # Options refused once are not refused again: a peer repeating a
        # request we declined would otherwise ping-pong with us forever.
        self._refused_local: set[int] = set()
        self._refused_remote: set[int] = set()
        self._com_port: bool | None = None
        self._outgoing = bytearray()
        self._parse = _Parse.DATA
        self._verb = 0
        self._subneg = bytearray()
        self._subneg_overflow = False
        self._cr_seen = False  # NVT: a CR was the last data byte, a NUL may follow
        self._binary_in = False  # the peer sends in BINARY mode (kept in step with self._remote)

    # -- state ------------------------------------------------------------

    @property
    def com_port_enabled(self) -> bool | None:
        """None until the peer answered about COM-PORT-OPTION, then its answer."""
        return self._com_port

    @property
    def binary_local(self) -> bool:
        """We send in BINARY mode (the peer said DO BINARY)."""
        return self._local.get(BINARY) is _Q.YES

    @property
    def binary_remote(self) -> bool:
        """The peer sends in BINARY mode (it said WILL BINARY)."""
        return self._binary_in

    @property
    def plain_data_follows(self) -> bool:
        """What comes next from the peer can be taken as data with IAC IAC undoubled and nothing else: no
        command half-read, and the peer sends in BINARY mode (no CR NUL to undo)."""
        return self._parse is _Parse.DATA and self._binary_in

    def option_enabled(self, option: int, *, local: bool) -> bool:
        table = self._local if local else self._remote
        return table.get(option) is _Q.YES

    @property
    def commands_received(self) -> int:
        """Telnet commands received since the count last started (IAC IAC, a data byte, is not one)."""
        return self._commands

    def restart_command_count(self) -> None:
        """Start counting telnet commands towards ``command_limit`` again (a new interval of the caller's)."""
        self._commands = 0

    # -- sending ----------------------------------------------------------

    def initiate(self) -> bytes:
        """The opening negotiation; options already agreed or asked for are skipped."""
        out = bytearray()
        for verb, option in _OPENING[self.role]:
            table = self._local if verb == WILL else self._remote
            if table.get(option, _Q.NO) is _Q.NO:
                table[option] = _Q.WANTYES
                out += bytes((IAC, verb, option))
        return bytes(out)

    def data_to_send(self) -> bytes:
        """Answers the codec owes the peer (option negotiation); empties the buffer."""
        if not self._outgoing:
            return b""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def send_data(self, data: bytes) -> bytes:
        """User data for the wire.

        Only IAC is escaped.  CR is not stuffed with NUL even before BINARY is
        agreed: serial servers (ser2net) pass every byte through, so a NUL
        added here would reach the device.
        """
        return _escape(data)

    def send(self, command: PortCommand) -> bytes:
        """One COM-PORT-OPTION subnegotiation, with code + 100 in the server role."""
        code = _COMMAND_OF.get(type(command))
        if code is None:
            raise ValueError(f"{type(command).__name__} is not a COM-PORT-OPTION command")
        wire_code = code + SERVER_OFFSET if self.role is Role.SERVER else int(code)
        value = _escape(_encode_value(command))
        return bytes((IAC, SB, COM_PORT_OPTION, wire_code)) + value + bytes((IAC, SE))

    # -- receiving --------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Events for the bytes that arrived; any split of the input gives the same events."""
        if type(data) is not bytes:
            data = bytes(data)  # Data events must not alias a buffer the caller reuses
        if self._parse is _Parse.DATA and self._binary_in and data:
            if data.find(_IAC_BYTE) < 0:
                # Nearly every read of a busy link: all data, handed on as it came.
                self._cr_seen = False
                return [Data(data)]
            if _undouble is not None and (plain := _undouble(data)) is not None:
                self._cr_seen = False  # all data too, its 0xFF doubled
                return [Data(plain)]
        out = _Events()
        pos, end = 0, len(data)
        while pos < end:
            if self._parse is _Parse.DATA:
                pos = self._data_run(data, pos, out)
            elif self._parse is _Parse.SB:
                stop = data.find(_IAC_BYTE, pos)
                stop = end if stop < 0 else stop
                self._take_subneg(data[pos:stop], out)
                if stop < end:
                    self._parse = _Parse.SB_IAC
                pos = stop + 1
            else:
                self._step(data[pos], out)
                pos += 1
        return out.finish()

    def _data_run(self, data: bytes, pos: int, out: _Events) -> int:
        """Take data from ``pos`` up to the first IAC that starts a command; where parsing goes on.

        Doubled IACs are data (0xFF): they are undone in slices, and a run of several by
        one regular-expression match, never byte by byte in Python.  An IAC that ends the
        input may be the first half of a pair: it is left to the IAC state, like a command.
        """
        end = len(data)
        find = data.find
        parts = []
        start = pos
        while True:
            at = find(_IAC_BYTE, pos)
            if at < 0:
                parts.append(data[start:])
                stop = end
                break
            if at + 1 < end and data[at + 1] == IAC:
                if at + 2 < end and data[at + 2] == IAC:
                    run_end = _IAC_RUN.match(data, at).end()  # type: ignore[union-attr]
                    parts.append(data[start:at])
                    parts.append(_IAC_BYTE * ((run_end - at) >> 1))
                    if (run_end - at) & 1:  # odd: the last IAC of the run starts a command
                        stop = run_end - 1
                        break
                    start = pos = run_end
                else:
                    parts.append(data[start:at + 1])
                    start = pos = at + 2
                continue
            parts.append(data[start:at])
            stop = at
            break
        self._take_data(parts[0] if len(parts) == 1 else b"".join(parts), out)
        if stop < end:
            self._parse = _Parse.IAC
            return stop + 1
        return end

    def _step(self, byte: int, out: _Events) -> None:
        if self._parse is _Parse.IAC:
            self._parse = _Parse.DATA
            self._command(byte, out)
        elif self._parse is _Parse.NEGOTIATE:
            self._parse = _Parse.DATA
            self._negotiate(self._verb, byte, out)
        elif self._parse is _Parse.SB_IAC:
            self._subneg_iac(byte, out)

    def _command(self, byte: int, out: _Events) -> None:
        """The byte after an IAC in the data stream."""
        if byte == IAC:
            self._take_data(_IAC_BYTE, out)
            return
        self._commands += 1
        if self._commands == self._command_limit:
            # Once per count: a peer that sends nothing but commands must not cost an event each.
            out.add(LimitExceeded("commands", f"{self._commands:,} telnet commands"))
        if byte in (WILL, WONT, DO, DONT):
            self._verb = byte
            self._parse = _Parse.NEGOTIATE
        elif byte == SB:
            self._subneg.clear()
            self._subneg_overflow = False
            self._subneg_skipped = 0
            self._parse = _Parse.SB
        elif byte == SE:
            out.add(ProtocolError("IAC SE outside a subnegotiation"))
        elif byte not in _IGNORED_COMMANDS:
            out.add(ProtocolError(f"unknown telnet command IAC {byte}"))

    def _take_data(self, chunk: bytes, out: _Events) -> None:
        if not chunk:
            return
        if self._binary_in:
            self._cr_seen = False
            out.data(chunk)
            return
        # RFC 854 NVT: a bare CR is sent as CR NUL; the NUL is not data.
        # The CR may end one read and its NUL start the next.
        if self._cr_seen and chunk[0] == _NUL:
            chunk = chunk[1:]
        self._cr_seen = chunk[-1:] == b"\r"
        out.data(chunk.replace(b"\r\x00", b"\r"))

    # -- subnegotiation ---------------------------------------------------

    def _take_subneg(self, chunk: bytes, out: _Events) -> None:
        if not chunk:
            return
        before = self._subneg_skipped
        if self._subneg_overflow:
            self._subneg_skipped += len(chunk)
        else:
            self._subneg += chunk
            if len(self._subneg) <= self._max_subnegotiation:
                return
            # Keep parsing to IAC SE so the stream stays in step, but do not
            # buffer what a broken or hostile peer keeps sending.
            self._subneg_overflow = True
            self._subneg_skipped = len(self._subneg)
            self._subneg.clear()
            out.add(ProtocolError(f"subnegotiation longer than {self._max_subnegotiation} bytes skipped"))
        if before <= self._endless_subnegotiation < self._subneg_skipped:
            out.add(LimitExceeded("subnegotiation",
                                  f"subnegotiation longer than {self._endless_subnegotiation:,} bytes"))

    def _subneg_iac(self, byte: int, out: _Events) -> None:
        if byte == IAC:  # RFC 855: IAC IAC inside SB is one 255
            self._parse = _Parse.SB
            self._take_subneg(_IAC_BYTE, out)
        elif byte == SE:
            self._parse = _Parse.DATA
            if not self._subneg_overflow:
                self._subnegotiation(bytes(self._subneg), out)
            self._subneg.clear()
        else:
            # The peer never closed the subnegotiation (or sent a lone 255 in
            # a value).  Drop it and read the IAC as the command it looks
            # like, which is how a stream with a missing IAC SE gets back in step.
            if not self._subneg_overflow:
                out.add(ProtocolError(f"IAC {byte} inside a subnegotiation; subnegotiation skipped"))
            self._subneg.clear()
            self._parse = _Parse.DATA
            self._command(byte, out)

    def _subnegotiation(self, payload: bytes, out: _Events) -> None:
        if not payload:
            out.add(ProtocolError("empty subnegotiation"))
            return
        if payload[0] != COM_PORT_OPTION:
            return  # RFC 855: subnegotiation of an option we do not speak is ignored
        if len(payload) < 2:
            out.add(ProtocolError("COM-PORT-OPTION subnegotiation without a command"))
            return
        self._com_port_in_use(out)
        code, value = payload[1], payload[2:]
        if self.role is Role.CLIENT:
            if code < SERVER_OFFSET:
                out.add(ProtocolError(f"client command code {code} received from a server"))
                return
            code -= SERVER_OFFSET
        elif code >= SERVER_OFFSET:
            out.add(ProtocolError(f"server answer code {code} received from a client"))
            return
        try:
            command = Command(code)
        except ValueError:
            out.add(ProtocolError(f"unknown COM-PORT-OPTION command {payload[1]}"))
            return
        out.add(_decode_command(command, value))

    # -- option negotiation -----------------------------------------------

    def _negotiate(self, verb: int, option: int, out: _Events) -> None:
        """RFC 1143: answer only what changes the option's state."""
        local = verb in (DO, DONT)  # DO/DONT are about what we perform
        positive = verb in (DO, WILL)
        table = self._local if local else self._remote
        wanted = option in (_WANTED_LOCAL if local else _WANTED_REMOTE)[self.role]
        agree, refuse = (WILL, WONT) if local else (DO, DONT)
        before = table.get(option, _Q.NO)

        if positive:
            if before is _Q.NO:
                if wanted:
                    after = _Q.YES
                    self._outgoing += bytes((IAC, agree, option))
                else:
                    after = _Q.NO
                    self._refuse(option, local, refuse)
            else:
                after = _Q.YES  # YES: repeated; WANTYES: the answer to our request
        else:
            after = _Q.NO
            if before is _Q.YES:
                # RFC 854: a demand to disable must be acknowledged.
                self._outgoing += bytes((IAC, refuse, option))
            # NO: repeated or unasked; WANTYES: our request was refused.
        table[option] = after
        if option == BINARY and not local:
            self._binary_in = after is _Q.YES
        self._report(option, local, before is _Q.YES, after is _Q.YES, out)

    def _com_port_in_use(self, out: _Events) -> None:
        """A COM-PORT-OPTION subnegotiation while our request is unanswered.

        pyserial's client takes a server's DO 44 that arrives before its own
        WILL 44 as the answer to it, and then never sends WILL 44 (RFC 1143
        would have it answer).  A peer speaking the option has agreed to it.
        """
        local = self.role is Role.CLIENT
        table = self._local if local else self._remote
        if table.get(COM_PORT_OPTION) is _Q.WANTYES:
            table[COM_PORT_OPTION] = _Q.YES
            self._report(COM_PORT_OPTION, local, False, True, out)

    def _refuse(self, option: int, local: bool, refuse: int) -> None:
        refused = self._refused_local if local else self._refused_remote
        if option not in refused:
            refused.add(option)
            self._outgoing += bytes((IAC, refuse, option))

    def _report(self, option: int, local: bool, before: bool, after: bool, out: _Events) -> None:
        # The side of COM-PORT-OPTION that matters is the client's: the client
        # performs it (WILL), the server lets it (DO).  Whatever the peer says
        # about the other side (ser2net answers DO 44 with WONT 44) is moot.
        if option == COM_PORT_OPTION and local == (self.role is Role.CLIENT):
            if after != self._com_port:
                self._com_port = after
                out.add(ComPortOption(after))
        elif before != after:
            out.add(OptionChange(option, local, after))


# -- Conversions between vcom.settings and RFC 2217 codes ---------------------

_PARITY_CODES = {Parity.NONE: 1, Parity.ODD: 2, Parity.EVEN: 3, Parity.MARK: 4, Parity.SPACE: 5}
_PARITY_FROM_CODE = {code: parity for parity, code in _PARITY_CODES.items()}
_STOP_CODES = {StopBits.ONE: 1, StopBits.TWO: 2, StopBits.ONE_POINT_FIVE: 3}
_STOP_FROM_CODE = {code: stop for stop, code in _STOP_CODES.items()}
_FLOW_OUT = {
    FlowControl.NONE: Control.FLOW_NONE,
    FlowControl.XONXOFF: Control.FLOW_XONXOFF,
    FlowControl.RTSCTS: Control.FLOW_HARDWARE,
}
_FLOW_IN = {
    FlowControl.NONE: Control.INBOUND_FLOW_NONE,
    FlowControl.XONXOFF: Control.INBOUND_FLOW_XONXOFF,
    FlowControl.RTSCTS: Control.INBOUND_FLOW_HARDWARE,
}
_FLOW_FROM_CONTROL = {int(c): ("out", f) for f, c in _FLOW_OUT.items()} | {
    int(c): ("in", f) for f, c in _FLOW_IN.items()
}


def parity_code(parity: Parity) -> int:
    return _PARITY_CODES[parity]


def parity_from_code(code: int) -> Parity | None:
    """None for 0 (the query) and for codes the RFC does not define."""
    return _PARITY_FROM_CODE.get(code)


def stop_code(stop: StopBits) -> int:
    return _STOP_CODES[stop]


def stop_from_code(code: int) -> StopBits | None:
    return _STOP_FROM_CODE.get(code)


def flow_out_control(flow: FlowControl) -> Control:
    return _FLOW_OUT[flow]


def flow_in_control(flow: FlowControl) -> Control:
    return _FLOW_IN[flow]


def flow_from_control(value: int) -> tuple[str, FlowControl] | None:
    """("out" or "in", flow) for a SET-CONTROL flow value; None for queries,
    non-flow values and DCD/DTR/DSR flow, which LineSettings cannot express."""
    return _FLOW_FROM_CONTROL.get(value)


def settings_commands(settings: LineSettings) -> list[PortCommand]:
    """The commands that put a remote port into ``settings``.

    RFC 2217 recommends baud rate, data size, parity, stop size in this
    order.  Outbound flow comes before inbound because values 1 to 3 are
    defined as "outbound/both": sent last, they would undo the inbound one.
    """
    return [
        SetBaudRate(settings.baud),
        SetDataSize(settings.data_bits),
        SetParity(parity_code(settings.parity)),
        SetStopSize(stop_code(settings.stop_bits)),
        SetControl(flow_out_control(settings.flow_out)),
        SetControl(flow_in_control(settings.flow_in)),
    ]


def dtr_control(on: bool) -> Control:
    return Control.DTR_ON if on else Control.DTR_OFF


def rts_control(on: bool) -> Control:
    return Control.RTS_ON if on else Control.RTS_OFF


def break_control(on: bool) -> Control:
    return Control.BREAK_ON if on else Control.BREAK_OFF


_MODEM_LINES = (
    ("dcd", ModemState.CD),
    ("ri", ModemState.RI),
    ("dsr", ModemState.DSR),
    ("cts", ModemState.CTS),
)


def modem_signals(state: ModemState, signals: Signals | None = None) -> Signals:
    """``signals`` updated with the input lines a NOTIFY-MODEMSTATE reports."""
    levels = {name: bool(state & bit) for name, bit in _MODEM_LINES}
    return (signals or Signals()).with_(**levels)


def modem_state(signals: Signals) -> ModemState:
    """The line bits (no delta bits) a server reports for ``signals``; unknown lines read as off."""
    state = ModemState(0)
    for name, bit in _MODEM_LINES:
        if getattr(signals, name):
            state |= bit
    return state
