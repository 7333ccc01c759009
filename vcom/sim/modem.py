"""``sim:modem``: a Hayes-compatible modem whose far end is a loopback once connected."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ..settings import FlowControl
from .line import CallLater, Clock, TimerHandle
from .uart import RX_QUEUE, Inputs, SimDevice

_CR = 0x0D
_LF = 0x0A
_BACKSPACE = 0x08
_DELETE = 0x7F
_PLUS = ord("+")
_MAX_COMMAND = 255  # Hayes command buffers are about this long; longer lines are an error


class _Result(enum.Enum):
    """Hayes result codes: (numeric form, verbose form)."""

    OK = (0, "OK")
    CONNECT = (1, "CONNECT")
    NO_CARRIER = (3, "NO CARRIER")
    ERROR = (4, "ERROR")


# Settings that a simulated line cannot act on but that init strings carry (minicom's
# default is "AT S7=45 S0=0 L1 V1 X4 &c1 E1 Q0"): accepted and ignored.
_IGNORED = frozenset({"L", "M", "X", "&C", "&K", "&W"})


@dataclass(slots=True)
class _ModemConfig:
    """What ATZ and AT&F restore."""

    echo: bool = True
    verbose: bool = True
    quiet: bool = False
    dtr_mode: int = 2  # AT&D2: dropping DTR hangs up
    registers: dict[int, int] = field(default_factory=lambda: {0: 0, 2: 43, 3: 13, 4: 10, 5: 8, 7: 50, 12: 50})


class ModemDevice(SimDevice):
    """A Hayes-compatible modem whose far end is a loopback once connected.

    Command mode parses ``AT`` lines; ``ATD`` connects at once and enters data
    mode, where every byte comes back.  The escape ``+++`` needs ``guard_time``
    seconds of silence before and after it (Hayes S12, 1 s by default).
    """

    name = "sim:modem"
    IDENTITY = "vcom simulated modem"

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        call_later: CallLater | None = None,
        guard_time: float = 1.0,
    ) -> None:
        if guard_time <= 0:
            raise ValueError(f"guard time must be positive, not {guard_time}")
        super().__init__(clock=clock, call_later=call_later)
        self._guard = guard_time
        self._config = _ModemConfig()
        self._line = bytearray()
        self._overflow = False
        self._carrier = False
        self._online = False
        self._last_byte = 0.0
        self._pluses = 0
        self._escape_timer: TimerHandle | None = None

    def _inputs(self) -> Inputs:
        return Inputs(cts=self._rts, dsr=self._sink is not None, dcd=self._carrier)

    def _started(self) -> None:
        self._config = _ModemConfig()
        self._line.clear()
        self._overflow = False
        self._carrier = self._online = False
        self._last_byte = self._time.clock()

    def _stopped(self) -> None:
        self._cancel_escape()
        self._carrier = self._online = False

    def _tx_held(self) -> bool:
        # Answers and echoes go back through the receive queue: stop taking input
        # while that is full rather than let it grow.
        return super()._tx_held() or self._rx.pending >= RX_QUEUE

    def _rx_held(self) -> bool:
        # A modem with hardware flow control (AT&K3) stops sending while RTS is off.
        rts_hold = self._settings.flow_in is FlowControl.RTSCTS and not self._rts
        return super()._rx_held() or rts_hold

    def _dtr_changed(self, on: bool) -> None:
        if on or not self._carrier:
            return
        if self._config.dtr_mode >= 2:
            self._hang_up()
            self._result(_Result.NO_CARRIER)
        elif self._config.dtr_mode == 1 and self._online:
            self._to_command_mode()
            self._result(_Result.OK)

    def _transmitted(self, data: bytes) -> None:
        now = self._time.clock()
        for byte in data:
            if self._online:
                self._data_byte(byte, now)
            else:
                self._command_byte(byte)

    # Data mode

    def _data_byte(self, byte: int, now: float) -> None:
        self._receive(bytes((byte,)))
        silence = now - self._last_byte
        self._last_byte = now
        # Hayes escape: guard time of silence, three escape characters each within the
        # guard time of the last, then guard time of silence (checked by the timer).
        first = self._pluses == 0 and silence >= self._guard
        next_ = 0 < self._pluses < 3 and silence < self._guard
        if byte == _PLUS and (first or next_):
            self._pluses += 1
            if self._pluses == 3:
                self._escape_timer = self._time.call_later(self._guard, self._escape)
        else:
            self._cancel_escape()

    def _escape(self) -> None:
        self._escape_timer = None
        self._to_command_mode()
        self._result(_Result.OK)

    def _cancel_escape(self) -> None:
        self._pluses = 0
        if self._escape_timer is not None:
            self._escape_timer.cancel()
            self._escape_timer = None

    def _to_command_mode(self) -> None:
        self._cancel_escape()
        self._online = False
        self._line.clear()
        self._overflow = False

    def _hang_up(self) -> None:
        self._to_command_mode()
        self._carrier = False
        self._report_signals()

    # Command mode

    def _command_byte(self, byte: int) -> None:
        if self._config.echo:
            self._receive(bytes((byte,)))
        if byte == _CR:
            line, overflow = self._line.decode("latin-1"), self._overflow
            self._line.clear()
            self._overflow = False
            self._execute(line, overflow)
        elif byte in (_BACKSPACE, _DELETE):
            if self._line:
                del self._line[-1]
        elif byte == _LF:
            pass  # terminals that end lines with CR LF: the LF is not part of a command
        elif len(self._line) < _MAX_COMMAND:
            self._line.append(byte)
        else:
            self._overflow = True

    def _execute(self, line: str, overflow: bool) -> None:
        start = line.upper().find("AT")
        if start < 0:
            return  # without the attention prefix a line is not for the modem
        if overflow:
            self._result(_Result.ERROR)
            return
        # Hayes commands are case-insensitive and spaces between them are ignored.
        self._result(self._run(line[start + 2 :].replace(" ", "").upper()))

    def _run(self, text: str) -> _Result:
        pos = 0
        while pos < len(text):
            command = text[pos]
            pos += 1
            if command == "D":
                return self._dial()  # the rest of the line is the number
            if command == "&":
                if pos == len(text):
                    return _Result.ERROR
                command += text[pos]
                pos += 1
            if command == "S":
                pos, result = self._register(text, pos)
            else:
                number, pos = _number(text, pos)
                result = self._basic(command, number or 0)
            if result is not None:
                return result
        return _Result.OK

    def _basic(self, command: str, n: int) -> _Result | None:
        """Run one command; None means carry on with the rest of the line."""
        config = self._config
        if command in ("E", "V", "Q") and n <= 1:
            setattr(config, {"E": "echo", "V": "verbose", "Q": "quiet"}[command], bool(n))
        elif command in ("Z", "&F"):
            if command == "Z" and self._carrier:
                self._hang_up()
            self._config = _ModemConfig()
        elif command == "&D" and n <= 3:
            config.dtr_mode = n
        elif command == "I":
            self._info(self.IDENTITY)
        elif command == "H" and n <= 1:
            if n == 0 and self._carrier:
                self._hang_up()
                return _Result.NO_CARRIER
        elif command == "O":
            if not self._carrier:
                return _Result.NO_CARRIER
            self._online = True
            self._last_byte = self._time.clock()
            return _Result.CONNECT
        elif command not in _IGNORED:
            return _Result.ERROR
        return None

    def _register(self, text: str, pos: int) -> tuple[int, _Result | None]:
        register, pos = _number(text, pos)
        if register is None or register > 255:
            return pos, _Result.ERROR
        if text[pos : pos + 1] == "=":
            value, pos = _number(text, pos + 1)
            if value is None or value > 255:
                return pos, _Result.ERROR
            self._config.registers[register] = value
        elif text[pos : pos + 1] == "?":
            pos += 1
            self._info(f"{self._config.registers.get(register, 0):03d}")
        return pos, None

    def _dial(self) -> _Result:
        if self._carrier:
            return _Result.ERROR
        self._carrier = self._online = True
        self._last_byte = self._time.clock()
        self._pluses = 0
        self._report_signals()
        return _Result.CONNECT

    # Answers

    def _result(self, result: _Result) -> None:
        if self._config.quiet:
            return
        code, text = result.value
        if result is _Result.CONNECT:
            text = f"{text} {self._settings.baud}"
        # V1 frames a result as CR LF text CR LF; V0 sends the digit and CR (Hayes).
        self._receive(f"\r\n{text}\r\n".encode() if self._config.verbose else f"{code}\r".encode())

    def _info(self, text: str) -> None:
        self._receive(f"\r\n{text}\r\n".encode() if self._config.verbose else f"{text}\r\n".encode())


def _number(text: str, pos: int) -> tuple[int | None, int]:
    end = pos
    while end < len(text) and text[end].isdigit():
        end += 1
    return (int(text[pos:end]) if end > pos else None), end
