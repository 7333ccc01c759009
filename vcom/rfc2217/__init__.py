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

* Telnet framing (RFC 854/855), in :mod:`.connection`: IAC escaping and a
  state machine that resumes anywhere, so a split of the input never changes
  the events.  Data is taken in runs, not bytes: a read without IAC is one
  Data event as it came, and doubled IACs (0xFF data, common in firmware
  images) are undone in bulk, in C where :mod:`vcom._speedups` was built;
  only the bytes of commands go one at a time.  Subnegotiations run to
  ``IAC SE`` (never a fixed length, because values may contain a doubled
  0xFF) and are bounded in size.
* Option negotiation (RFC 1143 "Q method", without the queue since this
  codec never asks to disable an option), in :mod:`.negotiation`: a request
  is answered only when it changes the option's state, which is what
  prevents negotiation loops with peers that repeat themselves.
* COM-PORT-OPTION commands (RFC 2217) decoded into frozen dataclasses, in
  :mod:`.events`.

The codec tolerates rather than raises: whatever the peer sends that it
cannot use becomes a :class:`ProtocolError` event and parsing goes on.  Only
a local programming error (sending a value that does not fit) raises.  Known
peer habits are accepted as they are: 8-byte SET-BAUDRATE answers (sredird),
NOTIFY instead of a mask answer (ser2net), an empty NOTIFY as a poll and
commands without a WILL 44 first (pyserial's client).  Answers are reported
as "the value in force", never matched against what was asked: that is the
caller's business, with its own clock.

Modules: :mod:`.codes` (telnet and COM-PORT-OPTION numbers, the roles),
:mod:`.events` (the events and the command values they carry),
:mod:`.negotiation` (RFC 1143), :mod:`.connection` (IAC escaping, the
parser, the :class:`Connection`).  Conversions between :mod:`vcom.settings`
and RFC 2217 codes live in :mod:`.convert` and nowhere else.  Everything
the rest of vcom uses is here.
"""

from .codes import (
    AO,
    AYT,
    BINARY,
    BRK,
    COM_PORT_OPTION,
    DM,
    DO,
    DONT,
    EC,
    ECHO,
    EL,
    GA,
    IAC,
    IP,
    NOP,
    SB,
    SE,
    SERVER_OFFSET,
    SGA,
    WILL,
    WONT,
    Command,
    Control,
    LineState,
    ModemState,
    Purge,
    Role,
)
from .connection import Connection
from .convert import (
    break_control,
    changed_commands,
    dtr_control,
    flow_from_control,
    flow_in_control,
    flow_out_control,
    modem_signals,
    modem_state,
    parity_code,
    parity_from_code,
    rts_control,
    settings_commands,
    stop_code,
    stop_from_code,
)
from .events import (
    ComPortOption,
    Data,
    Event,
    FlowControlResume,
    FlowControlSuspend,
    LimitExceeded,
    NotifyLineState,
    NotifyModemState,
    OptionChange,
    PortCommand,
    ProtocolError,
    PurgeData,
    SetBaudRate,
    SetControl,
    SetDataSize,
    SetLineStateMask,
    SetModemStateMask,
    SetParity,
    SetStopSize,
    Signature,
)

__all__ = [
    "AO", "AYT", "BINARY", "BRK", "COM_PORT_OPTION", "DM", "DO", "DONT", "EC", "ECHO", "EL", "GA", "IAC", "IP",
    "NOP", "SB", "SE", "SERVER_OFFSET", "SGA", "WILL", "WONT", "Command", "ComPortOption", "Connection", "Control",
    "Data", "Event", "FlowControlResume", "FlowControlSuspend", "LimitExceeded", "LineState", "ModemState",
    "NotifyLineState", "NotifyModemState", "OptionChange", "PortCommand", "ProtocolError", "Purge", "PurgeData",
    "Role", "SetBaudRate", "SetControl", "SetDataSize", "SetLineStateMask", "SetModemStateMask", "SetParity",
    "SetStopSize", "Signature", "break_control", "changed_commands", "dtr_control", "flow_from_control",
    "flow_in_control", "flow_out_control", "modem_signals", "modem_state", "parity_code", "parity_from_code",
    "rts_control", "settings_commands", "stop_code", "stop_from_code",
]
