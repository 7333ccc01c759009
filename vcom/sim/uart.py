"""The common UART of every simulated device: settings, modem lines, break,
a paced transmit and receive direction, and the hooks a device fills in."""

from __future__ import annotations

from typing import NamedTuple

from ..device import DeviceError, DeviceSink
from ..settings import FlowControl, LineSettings, Signals
from .line import CallLater, Clock, Pacer, Timebase

MAX_BAUD = 20_000_000
TX_QUEUE = 4096  # bytes, like a UART driver's transmit buffer
TX_LOW_WATER = TX_QUEUE // 2  # device_writable fires once the queue is down to this
RX_QUEUE = 4096  # a loopback stops transmitting while this much waits to be read

XON, XOFF = 0x11, 0x13

_DATA_BIT_MASKS = {bits: bytes(b & ((1 << bits) - 1) for b in range(256)) for bits in (5, 6, 7, 8)}


class Inputs(NamedTuple):
    """The lines a device drives towards the server."""

    cts: bool = False
    dsr: bool = False
    dcd: bool = False
    ri: bool = False


class SimDevice:
    """A UART and its wiring; subclasses say what sits at the far end."""

    name = "sim"

    def __init__(self, *, clock: Clock | None = None, call_later: CallLater | None = None) -> None:
        self._time = Timebase(clock, call_later)
        self._settings = LineSettings()
        self._sink: DeviceSink | None = None
        self._dtr = False
        self._rts = False
        self._break = False
        self._paused = False
        self._xoff = False  # an XOFF arrived while outbound XON/XOFF flow control is on
        self._want_writable = False
        self._reported: Inputs | None = None
        self._counts = {"bytes_in": 0, "bytes_out": 0, "breaks": 0, "dropped": 0}
        rate = self._settings.chars_per_second
        self._tx = Pacer(self._time, rate, self._transmit_done)
        self._rx = Pacer(self._time, rate, self._receive_done)

    # Device protocol

    def open(self, sink: DeviceSink) -> None:
        if self._sink is not None:
            raise DeviceError(f"{self.name} is already open")
        self._time.bind(self.name)
        self._sink = sink
        self._started()
        self._report_signals(always=True)
        self._update_holds()

    def close(self) -> None:
        if self._sink is None:
            return
        self._stopped()
        self._tx.clear()
        self._rx.clear()
        self._sink = None
        # A UART driver drops DTR and RTS on the last close (HUPCL).
        self._dtr = self._rts = self._break = self._paused = self._xoff = False
        self._want_writable = False
        self._reported = None

    def write(self, data: bytes) -> int:
        if self._sink is None:
            raise DeviceError(f"{self.name} is not open")
        taken = min(len(data), TX_QUEUE - self._tx.pending)
        if taken < len(data):
            self._want_writable = True
        if taken > 0:
            self._counts["bytes_in"] += taken
            self._tx.push(bytes(data[:taken]))
        return taken

    def apply_settings(self, settings: LineSettings) -> LineSettings:
        # Every framing and flow control is valid on a UART; only the speed has a
        # ceiling (LineSettings already refuses rates below 1).
        if settings.baud > MAX_BAUD:
            settings = settings.with_(baud=MAX_BAUD)
        self._settings = settings
        if settings.flow_out is not FlowControl.XONXOFF:
            self._xoff = False
        rate = settings.chars_per_second
        self._tx.set_rate(rate)
        self._rx.set_rate(rate)
        self._update_holds()
        return settings

    @property
    def settings(self) -> LineSettings:
        return self._settings

    def set_dtr(self, on: bool) -> bool:
        changed = on != self._dtr
        self._dtr = on
        if changed:
            self._dtr_changed(on)
            self._lines_changed()
        return self._dtr

    def set_rts(self, on: bool) -> bool:
        changed = on != self._rts
        self._rts = on
        if changed:
            self._lines_changed()
        return self._rts

    def set_break(self, on: bool) -> bool:
        if on == self._break:
            return on
        self._break = on
        if not on and self._sink is not None:
            self._counts["breaks"] += 1
            self._break_sent()
        self._update_holds()
        return on

    @property
    def signals(self) -> Signals:
        inputs = self._inputs()
        return Signals(dtr=self._dtr, rts=self._rts, cts=inputs.cts, dsr=inputs.dsr, dcd=inputs.dcd, ri=inputs.ri)

    def purge(self, *, receive: bool, transmit: bool) -> None:
        if transmit:
            self._tx.clear()
            self._maybe_writable()
        if receive:
            self._rx.clear()
        self._update_holds()

    def pause_reading(self) -> None:
        self._paused = True
        self._update_holds()

    def resume_reading(self) -> None:
        self._paused = False
        self._update_holds()

    # Status

    @property
    def stats(self) -> dict[str, int]:
        """Counters for ``vcom status``: bytes written to and delivered by the device,
        breaks sent, bytes dropped, and what is queued in each direction now."""
        return {**self._counts, "tx_queued": self._tx.pending, "rx_queued": self._rx.pending}

    @property
    def chars_per_second(self) -> float:
        return self._settings.chars_per_second

    # What subclasses define

    def _inputs(self) -> Inputs:
        return Inputs()

    def _started(self) -> None:
        """The device was opened."""

    def _stopped(self) -> None:
        """The device is being closed: cancel own timers."""

    def _transmitted(self, data: bytes) -> None:
        """``data`` left the UART and reached the far end."""

    def _break_sent(self) -> None:
        """A break (on, then off) reached the far end."""

    def _dtr_changed(self, on: bool) -> None:
        """DTR changed (called before the new inputs are reported)."""

    def _tx_held(self) -> bool:
        # A UART cannot send while the line is held in break; under hardware flow
        # control its transmitter waits for CTS, under XON/XOFF for the XON after an XOFF.
        cts_hold = self._settings.flow_out is FlowControl.RTSCTS and not self._inputs().cts
        return self._break or cts_hold or self._xoff

    def _rx_held(self) -> bool:
        return self._paused

    # Plumbing for subclasses

    def _receive(self, data: bytes) -> None:
        """The far end sent ``data``: it reaches the server at the line rate."""
        self._rx.push(data)

    def _receive_line_state(self, state: int) -> None:
        self._rx.push_marker(lambda: self._sink.device_line_state(state) if self._sink else None)

    def _lines_changed(self) -> None:
        self._report_signals()
        self._update_holds()

    def _update_holds(self) -> None:
        self._tx.hold(self._tx_held())
        self._rx.hold(self._rx_held())

    def _report_signals(self, *, always: bool = False) -> None:
        inputs = self._inputs()
        if self._sink is not None and (always or inputs != self._reported):
            self._reported = inputs
            self._sink.device_signals(self.signals)

    def _transmit_done(self, data: bytes) -> None:
        # With fewer than 8 data bits the high bits never reach the wire.
        self._transmitted(data.translate(_DATA_BIT_MASKS[self._settings.data_bits]))
        self._maybe_writable()
        self._update_holds()

    def _receive_done(self, data: bytes) -> None:
        if self._sink is None:
            return
        if self._settings.flow_out is FlowControl.XONXOFF and (XON in data or XOFF in data):
            data = self._obey_xon_xoff(data)
            if not data:
                return
        self._counts["bytes_out"] += len(data)
        self._sink.device_data(data)
        self._update_holds()

    def _obey_xon_xoff(self, data: bytes) -> bytes:
        """What a UART's receiver does under outbound XON/XOFF (termios IXON): an XOFF stops its
        transmitter, an XON starts it again, and neither is passed on."""
        for byte in data:
            if byte == XOFF:
                self._xoff = True
            elif byte == XON:
                self._xoff = False
        self._update_holds()
        return data.replace(bytes([XON]), b"").replace(bytes([XOFF]), b"")

    def _maybe_writable(self) -> None:
        if self._want_writable and self._sink is not None and self._tx.pending <= TX_LOW_WATER:
            self._want_writable = False
            self._sink.device_writable()
