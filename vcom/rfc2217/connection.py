"""Telnet framing (RFC 854/855) and the :class:`Connection`.

IAC doubling for what goes out, in Python and, where it was built, in C (:mod:`vcom._speedups`); the
parser that resumes anywhere in the input and hands COM-PORT-OPTION subnegotiations (RFC 2217) to their
decoding; the option tables that :class:`.negotiation.Negotiation` answers from, and the bytes the
connection owes the peer.
"""

from __future__ import annotations

import enum

from .. import PURE_PYTHON
from .codes import (
    _IAC_BYTE,
    _IAC_IAC,
    _IAC_RUN,
    _IAC_RUN_OF_4,
    _IGNORED_COMMANDS,
    _NUL,
    BINARY,
    COM_PORT_OPTION,
    DO,
    DONT,
    IAC,
    SB,
    SE,
    SERVER_OFFSET,
    WILL,
    WONT,
    Command,
    Role,
)
from .events import (
    _COMMAND_OF,
    Data,
    Event,
    LimitExceeded,
    PortCommand,
    ProtocolError,
    _decode_command,
    _encode_value,
    _Events,
)
from .negotiation import _OPENING, _Q, Negotiation

try:  # C loops for the data path, built at install time where a C compiler and Python's headers are
    if PURE_PYTHON:
        raise ImportError("VCOM_PURE_PYTHON is set")
    from .. import _speedups
except ImportError:  # the same results from the Python below
    _speedups = None  # type: ignore[assignment]

# -- IAC escaping (RFC 854) -------------------------------------------------


def _escape_python(data: bytes) -> bytes:
    # RFC 854: a data byte 255 is sent as IAC IAC; RFC 855 applies the same
    # rule inside subnegotiations, which is why values must be doubled too.
    if data.find(_IAC_RUN_OF_4) < 0:
        return data.replace(_IAC_BYTE, _IAC_IAC)  # returns data itself when there is no IAC
    # Long runs of 0xFF (firmware images): bytes.replace handles every occurrence on its own
    # (under 100 MB/s on all-0xFF data); doubling each run whole keeps it above 1 GB/s.
    parts: list[bytes] = []
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


# -- The connection -----------------------------------------------------------


class _Parse(enum.Enum):
    DATA = "data"
    IAC = "iac"  # IAC seen in data
    NEGOTIATE = "negotiate"  # IAC WILL/WONT/DO/DONT seen, option byte next
    SB = "sb"  # inside IAC SB ... IAC SE
    SB_IAC = "sb-iac"  # IAC seen inside a subnegotiation


class Connection(Negotiation):
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
