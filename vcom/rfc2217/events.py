"""The events the codec hands back and takes, and the values they carry on the wire.

One frozen dataclass per COM-PORT-OPTION command, used in both directions (see the package docstring), and
the telnet-level events beside them; the code of each command, and its value decoded from and encoded into
the bytes of a subnegotiation.  :class:`_Events` collects the events of one
:meth:`Connection.receive_data` call.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import astuple, dataclass

from .codes import Command, Control, LineState, ModemState, Purge

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
_BYTE_COMMANDS: dict[Command, Callable[[int], PortCommand]] = {
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


# -- Collecting events ------------------------------------------------------


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
