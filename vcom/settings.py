"""Serial line settings and signal state: the values every layer speaks.

The pty side turns termios into these values (``vcom.termio``), the RFC 2217
codec turns them into wire codes (``vcom.rfc2217``), and the link and port
only ever pass these dataclasses around.  Keeping one typed value for "the
line" means a new transport or a new source of settings (pinned values, a
preload shim) plugs in without touching the others.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, replace
from typing import Any


class Parity(enum.Enum):
    NONE = "none"
    ODD = "odd"
    EVEN = "even"
    MARK = "mark"
    SPACE = "space"


class StopBits(enum.Enum):
    ONE = "1"
    ONE_POINT_FIVE = "1.5"
    TWO = "2"


class FlowControl(enum.Enum):
    """Flow control for one direction of the line."""

    NONE = "none"
    XONXOFF = "xonxoff"
    RTSCTS = "rtscts"


_STOP_BITS = {StopBits.ONE: 1.0, StopBits.ONE_POINT_FIVE: 1.5, StopBits.TWO: 2.0}


@dataclass(frozen=True, slots=True)
class LineSettings:
    """What a UART is configured to: speed, framing and flow control.

    ``flow_out`` governs what we send (the remote obeys CTS or XOFF from the
    device); ``flow_in`` governs what the device sends (the remote drives RTS
    or sends XOFF).  termios has one CRTSCTS bit for both and IXON/IXOFF for
    each direction; RFC 2217 has separate outbound and inbound commands.
    """

    baud: int = 9600
    data_bits: int = 8
    parity: Parity = Parity.NONE
    stop_bits: StopBits = StopBits.ONE
    flow_out: FlowControl = FlowControl.NONE
    flow_in: FlowControl = FlowControl.NONE

    def __post_init__(self) -> None:
        if self.baud <= 0:
            raise ValueError(f"baud rate must be positive, not {self.baud}")
        if self.data_bits not in (5, 6, 7, 8):
            raise ValueError(f"data bits must be 5, 6, 7 or 8, not {self.data_bits}")

    def with_(self, **changes: object) -> LineSettings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def bits_per_character(self) -> float:
        """Bits on the wire per character: start bit, data bits, parity bit if any, stop bits."""
        return 1 + self.data_bits + (0 if self.parity is Parity.NONE else 1) + _STOP_BITS[self.stop_bits]

    @property
    def chars_per_second(self) -> float:
        return self.baud / self.bits_per_character

    def describe(self) -> str:
        """Short human form, e.g. ``19200 8N2 rtscts``."""
        frame = f"{self.data_bits}{self.parity.value[0].upper()}{self.stop_bits.value}"
        flow = _flow_text(self.flow_out, self.flow_in)
        return f"{self.baud} {frame}" + (f" {flow}" if flow else "")

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, enum.Enum):
                out[key] = value.value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LineSettings:
        return cls(
            baud=int(data.get("baud", 9600)),
            data_bits=int(data.get("data_bits", 8)),
            parity=Parity(data.get("parity", "none")),
            stop_bits=StopBits(str(data.get("stop_bits", "1"))),
            flow_out=FlowControl(data.get("flow_out", "none")),
            flow_in=FlowControl(data.get("flow_in", "none")),
        )


def _flow_text(out: FlowControl, inp: FlowControl) -> str:
    if out == inp:
        return "" if out is FlowControl.NONE else out.value
    return f"out:{out.value},in:{inp.value}"


@dataclass(frozen=True, slots=True)
class Signals:
    """Modem lines.  ``None`` means not known (never reported by the peer)."""

    dtr: bool | None = None
    rts: bool | None = None
    cts: bool | None = None
    dsr: bool | None = None
    dcd: bool | None = None
    ri: bool | None = None

    def with_(self, **changes: object) -> Signals:
        return replace(self, **changes)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, bool | None]:
        return asdict(self)
