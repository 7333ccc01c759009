"""Conversions between :mod:`vcom.settings` and RFC 2217 codes, here and nowhere else: parity and stop bits,
flow control, DTR/RTS/BREAK controls, modem lines, and the commands that put a remote port into a
:class:`vcom.settings.LineSettings`."""

from __future__ import annotations

from collections.abc import Callable

from ..settings import FlowControl, LineSettings, Parity, Signals, StopBits
from .codes import Control, ModemState
from .events import PortCommand, SetBaudRate, SetControl, SetDataSize, SetParity, SetStopSize

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


# Each setting and the command that carries it, in the order the commands go (settings_commands).
_SETTING_COMMANDS: tuple[tuple[str, Callable[[LineSettings], PortCommand]], ...] = (
    ("baud", lambda s: SetBaudRate(s.baud)),
    ("data_bits", lambda s: SetDataSize(s.data_bits)),
    ("parity", lambda s: SetParity(parity_code(s.parity))),
    ("stop_bits", lambda s: SetStopSize(stop_code(s.stop_bits))),
    ("flow_out", lambda s: SetControl(flow_out_control(s.flow_out))),
    ("flow_in", lambda s: SetControl(flow_in_control(s.flow_in))),
)


def settings_commands(settings: LineSettings) -> list[PortCommand]:
    """The commands that put a remote port into ``settings``.

    RFC 2217 recommends baud rate, data size, parity, stop size in this
    order.  Outbound flow comes before inbound because values 1 to 3 are
    defined as "outbound/both": sent last, they would undo the inbound one.
    """
    return [make(settings) for _, make in _SETTING_COMMANDS]


def changed_commands(before: LineSettings | None, after: LineSettings) -> list[PortCommand]:
    """The commands of ``settings_commands(after)`` for the settings that differ from ``before`` (all of
    them when None), in the same order.  Only those are built: a program's speed change is on its way
    to the wire here, and building all six to compare them took most of the time."""
    if before is None:
        return settings_commands(after)
    return [make(after) for name, make in _SETTING_COMMANDS if getattr(before, name) != getattr(after, name)]


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
