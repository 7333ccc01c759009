"""Simulated serial devices: ``sim:echo``, ``sim:gps`` and ``sim:modem``.

``vcom share sim:echo`` must work with no hardware, and the demo needs a
device that talks by itself.  Each simulator implements the
:class:`vcom.device.Device` protocol and behaves like the thing at the end of
a real UART, so whatever a client sees through vcom is what it would see on a
real line: the same settings answered back, the same speed, the same
back-pressure.

The shared model is a UART with two paced directions (:class:`_Pacer`):

* *transmit*: :meth:`write` puts bytes into a bounded queue (a UART driver's
  buffer); the queue drains at the line rate into the simulated device.  A
  full queue makes :meth:`write` short and ``device_writable`` tells the
  server when half of it is free again.
* *receive*: what the device sends (the loopback, the NMEA sentences, the
  modem's answers) is queued and delivered to the sink at the line rate.

The line rate is ``baud / bits per character`` (start bit, data bits, parity
bit, stop bits), and delivery happens in small batches from a timer: never
more characters than the elapsed time allows, never a catch-up burst after
the loop was late.  Holds model flow control: a transmitter stops while the
line is in break, while CTS is off under RTS/CTS flow control, or while the
far end cannot take more; the receive side stops while the server paused
reading.  Nothing grows without bound: a loopback stops transmitting when its
receive side is full, a GPS drops sentences nobody is reading.  As on a real
line, characters shorter than 8 data bits lose their high bits, and bytes
queued while the line is held in break follow the break.

Everything runs on the caller's asyncio loop through two injectable
callables, ``clock`` and ``call_later``, which default to the running loop's.
Tests inject a simulated clock and step time deterministically, so pacing is
checked by counting characters per simulated second, not by wall time.
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple, Protocol

from .device import Device, DeviceError, DeviceSink
from .rfc2217 import LineState
from .settings import FlowControl, LineSettings, Parity, Signals, StopBits

MAX_BAUD = 20_000_000
TICK = 0.01  # seconds between deliveries of a busy line
MAX_BURST = 0.05  # a late timer delivers at most this much line time at once
TX_QUEUE = 4096  # bytes, like a UART driver's transmit buffer
TX_LOW_WATER = TX_QUEUE // 2  # device_writable fires once the queue is down to this
RX_QUEUE = 4096  # a loopback stops transmitting while this much waits to be read
GPS_BACKLOG = 1024  # bytes of sentences a GPS keeps for a slow line before dropping

_DATA_BIT_MASKS = {bits: bytes(b & ((1 << bits) - 1) for b in range(256)) for bits in (5, 6, 7, 8)}
_STOP_BITS = {StopBits.ONE: 1.0, StopBits.ONE_POINT_FIVE: 1.5, StopBits.TWO: 2.0}


def bits_per_character(settings: LineSettings) -> float:
    """Bits on the wire per character: start bit, data bits, parity bit if any, stop bits."""
    parity_bits = 0 if settings.parity is Parity.NONE else 1
    return 1 + settings.data_bits + parity_bits + _STOP_BITS[settings.stop_bits]


def chars_per_second(settings: LineSettings) -> float:
    return settings.baud / bits_per_character(settings)


# -- Time ---------------------------------------------------------------------


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


Clock = Callable[[], float]
CallLater = Callable[[float, Callable[[], None]], TimerHandle]


class _Timebase:
    """The clock and timers a device runs on: injected ones, or the running loop's."""

    def __init__(self, clock: Clock | None, call_later: CallLater | None) -> None:
        self._injected = (clock, call_later)
        self.clock: Clock = clock or time.monotonic
        self.call_later: CallLater = call_later or _unbound_call_later

    def bind(self, name: str) -> None:
        clock, call_later = self._injected
        if clock is not None and call_later is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise DeviceError(f"{name} runs on an asyncio loop: open it from a coroutine") from None
        self.clock = clock or loop.time
        self.call_later = call_later or loop.call_later


def _unbound_call_later(delay: float, callback: Callable[[], None]) -> TimerHandle:
    raise DeviceError("simulated device used before it was opened")


# -- One direction of the line ------------------------------------------------

Marker = Callable[[], None]


class _Pacer:
    """A queue released no faster than the line rate, in small batches from a timer.

    A *run* starts when the queue becomes non-empty (or is released from a
    hold, or the rate changes); within a run, at time ``t`` at most
    ``floor((t - start) * rate)`` characters have been delivered.  Idle time is
    never banked: a new run starts from zero.  Markers are actions queued in
    order with the data (a break detected after the bytes before it); they
    take no line time.
    """

    def __init__(self, timebase: _Timebase, rate: float, deliver: Callable[[bytes], None]) -> None:
        self._time = timebase
        self._rate = rate
        self._deliver = deliver
        self._items: deque[bytearray | Marker] = deque()
        self._pending = 0
        self._held = False
        self._start = 0.0
        self._sent = 0
        self._timer: TimerHandle | None = None
        self._ticking = False

    @property
    def pending(self) -> int:
        """Bytes queued and not yet delivered."""
        return self._pending

    def push(self, data: bytes) -> None:
        if not data:
            return
        tail = self._items[-1] if self._items else None
        if isinstance(tail, bytearray):
            tail.extend(data)
        else:
            self._items.append(bytearray(data))
        self._pending += len(data)
        self._kick()

    def push_marker(self, action: Marker) -> None:
        self._items.append(action)
        self._kick()

    def clear(self) -> None:
        self._items.clear()
        self._pending = 0
        self._cancel()

    def hold(self, held: bool) -> None:
        if held == self._held:
            return
        self._held = held
        if held:
            self._cancel()
        else:
            self._kick()

    def set_rate(self, rate: float) -> None:
        if rate == self._rate:
            return
        self._rate = rate
        # Characters already counted at the old rate must not be re-timed at the new
        # one (a faster rate would otherwise deliver a burst): start a new run.
        self._start = self._time.clock()
        self._sent = 0
        self._cancel()
        self._kick()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _kick(self) -> None:
        if self._timer is None and not self._ticking and not self._held and self._items:
            self._start = self._time.clock()
            self._sent = 0
            self._schedule()

    def _schedule(self) -> None:
        # Wake when the next character is due, but not more often than TICK: at
        # high rates one wake-up delivers a batch, at 1 baud it delivers one.
        until_due = self._start + (self._sent + 1) / self._rate - self._time.clock()
        self._timer = self._time.call_later(max(TICK, until_due), self._tick)

    def _due(self, now: float) -> int:
        return int((now - self._start) * self._rate) - self._sent

    def _tick(self) -> None:
        self._timer = None
        now = self._time.clock()
        burst = max(1, int(self._rate * MAX_BURST))
        if self._due(now) > burst:
            # The timer ran late.  A UART cannot send faster to catch up: move the
            # run's start forward so that only one burst is due now.
            self._start = now - (self._sent + burst) / self._rate
        self._ticking = True
        try:
            self._release(now)
        finally:
            self._ticking = False
        if self._items and not self._held and self._timer is None:
            self._schedule()

    def _release(self, now: float) -> None:
        # ``_due`` is re-read on every step because a callback may hold, clear or
        # re-rate this line while we deliver.
        while self._items and not self._held:
            head = self._items[0]
            if not isinstance(head, bytearray):
                self._items.popleft()
                head()
                continue
            due = self._due(now)
            if due <= 0:
                return
            chunk = bytes(head[:due])
            del head[:due]
            if not head:
                self._items.popleft()
            self._pending -= len(chunk)
            self._sent += len(chunk)
            self._deliver(chunk)


# -- The common UART ----------------------------------------------------------


class _Inputs(NamedTuple):
    """The lines a device drives towards the server."""

    cts: bool = False
    dsr: bool = False
    dcd: bool = False
    ri: bool = False


class _SimDevice:
    """A UART and its wiring; subclasses say what sits at the far end."""

    name = "sim"

    def __init__(self, *, clock: Clock | None = None, call_later: CallLater | None = None) -> None:
        self._time = _Timebase(clock, call_later)
        self._settings = LineSettings()
        self._sink: DeviceSink | None = None
        self._dtr = False
        self._rts = False
        self._break = False
        self._paused = False
        self._want_writable = False
        self._reported: _Inputs | None = None
        self._counts = {"bytes_in": 0, "bytes_out": 0, "breaks": 0, "dropped": 0}
        rate = chars_per_second(self._settings)
        self._tx = _Pacer(self._time, rate, self._transmit_done)
        self._rx = _Pacer(self._time, rate, self._receive_done)

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
        self._dtr = self._rts = self._break = self._paused = False
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
        rate = chars_per_second(settings)
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
        return chars_per_second(self._settings)

    # What subclasses define

    def _inputs(self) -> _Inputs:
        return _Inputs()

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
        # control its transmitter waits for CTS.
        cts_hold = self._settings.flow_out is FlowControl.RTSCTS and not self._inputs().cts
        return self._break or cts_hold

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
        self._counts["bytes_out"] += len(data)
        self._sink.device_data(data)
        self._update_holds()

    def _maybe_writable(self) -> None:
        if self._want_writable and self._sink is not None and self._tx.pending <= TX_LOW_WATER:
            self._want_writable = False
            self._sink.device_writable()


# -- sim:echo -------------------------------------------------------------------


class EchoDevice(_SimDevice):
    """A loopback plug: TX to RX, RTS to CTS, DTR to DSR and DCD."""

    name = "sim:echo"

    def _inputs(self) -> _Inputs:
        return _Inputs(cts=self._rts, dsr=self._dtr, dcd=self._dtr)

    def _transmitted(self, data: bytes) -> None:
        self._receive(data)

    def _break_sent(self) -> None:
        # The receiver sees the line held at space for longer than a character:
        # RFC 2217 NOTIFY-LINESTATE "break-detect".
        self._receive_line_state(int(LineState.BREAK))

    def _tx_held(self) -> bool:
        # What is sent comes back: while nobody reads, or the way back is full,
        # the transmit queue stops draining and writers feel it.
        return super()._tx_held() or self._paused or self._rx.pending >= RX_QUEUE


# -- sim:gps --------------------------------------------------------------------

CENTER = (52.5200, 13.4050)  # the GPS drives round this point (degrees N, E)
CIRCLE_RADIUS_M = 100.0
CIRCLE_PERIOD_S = 360  # one lap in six minutes: about 3.4 knots
ALTITUDE_M = 34.0
GEOID_SEPARATION_M = 39.0
_METRES_PER_DEGREE = 111_320.0
_KNOTS_PER_MPS = 3600 / 1852


def nmea_checksum(body: str) -> str:
    """The NMEA 0183 checksum of ``body`` (the text between ``$`` and ``*``): XOR of its
    bytes as two upper-case hex digits.  Raises ValueError for non-ASCII text."""
    value = 0
    for byte in body.encode("ascii"):
        value ^= byte
    return f"{value:02X}"


def parse_position(line: str) -> tuple[float, float] | None:
    """Latitude and longitude in decimal degrees from a GGA or RMC sentence with a fix.

    Any talker (``GP``, ``GN``...) is accepted.  Returns None for other
    sentences, a wrong or missing checksum, no fix, or malformed fields.
    """
    text = line.strip()
    if len(text) < 4 or not text.startswith("$") or text[-3] != "*":
        return None
    body, checksum = text[1:-3], text[-2:]
    try:
        if nmea_checksum(body) != checksum.upper():
            return None
    except ValueError:
        return None
    fields = body.split(",")
    kind = fields[0][2:]
    if kind == "GGA" and len(fields) > 6 and fields[6] not in ("", "0"):
        lat, ns, lon, ew = fields[2:6]
    elif kind == "RMC" and len(fields) > 6 and fields[2] == "A":
        lat, ns, lon, ew = fields[3:7]
    else:
        return None
    latitude = _nmea_degrees(lat, ns, "N", "S", 90.0)
    longitude = _nmea_degrees(lon, ew, "E", "W", 180.0)
    if latitude is None or longitude is None:
        return None
    return latitude, longitude


def _nmea_degrees(value: str, hemisphere: str, positive: str, negative: str, limit: float) -> float | None:
    # NMEA writes angles as (d)ddmm.mmmm: the last two integer digits are minutes.
    whole = value.split(".", 1)[0]
    if hemisphere not in (positive, negative) or len(whole) < 3 or not whole.isdigit():
        return None
    try:
        minutes = float(value[len(whole) - 2 :])
    except ValueError:
        return None
    degrees = int(whole[:-2]) + minutes / 60
    if minutes >= 60 or degrees > limit:
        return None
    return -degrees if hemisphere == negative else degrees


@dataclass(frozen=True, slots=True)
class _Fix:
    latitude: float
    longitude: float
    speed_knots: float
    course: float


def _fix_at(second: int) -> _Fix:
    """Where the simulated receiver is: driving clockwise round CENTER, one lap per period."""
    angle = 2 * math.pi * (second % CIRCLE_PERIOD_S) / CIRCLE_PERIOD_S
    lat0, lon0 = CENTER
    north = CIRCLE_RADIUS_M * math.cos(angle)
    east = CIRCLE_RADIUS_M * math.sin(angle)
    latitude = lat0 + north / _METRES_PER_DEGREE
    longitude = lon0 + east / (_METRES_PER_DEGREE * math.cos(math.radians(lat0)))
    speed = 2 * math.pi * CIRCLE_RADIUS_M / CIRCLE_PERIOD_S * _KNOTS_PER_MPS
    course = (math.degrees(angle) + 90.0) % 360.0  # clockwise: heading is 90 degrees ahead
    return _Fix(latitude, longitude, speed, course)


def _nmea_angle(value: float, degree_digits: int) -> str:
    minutes_total = round(abs(value) * 60, 5)
    degrees, minutes = divmod(minutes_total, 60)
    return f"{int(degrees):0{degree_digits}d}{minutes:08.5f}"


def _sentence(body: str) -> str:
    return f"${body}*{nmea_checksum(body)}\r\n"


def gps_sentences(second: int) -> str:
    """The GGA and RMC sentences the receiver sends for UTC ``second`` (Unix time)."""
    fix = _fix_at(second)
    moment = datetime.fromtimestamp(second, UTC)
    hms = moment.strftime("%H%M%S.00")
    lat = f"{_nmea_angle(fix.latitude, 2)},{'N' if fix.latitude >= 0 else 'S'}"
    lon = f"{_nmea_angle(fix.longitude, 3)},{'E' if fix.longitude >= 0 else 'W'}"
    # GGA: fix quality 1 (GPS), 8 satellites, HDOP 0.9, altitude and geoid separation in metres.
    gga = f"GPGGA,{hms},{lat},{lon},1,08,0.9,{ALTITUDE_M:.1f},M,{GEOID_SEPARATION_M:.1f},M,,"
    # RMC (NMEA 2.3): status A, speed in knots, course over ground, date, no magnetic
    # variation, mode A (autonomous).
    date = moment.strftime("%d%m%y")
    rmc = f"GPRMC,{hms},A,{lat},{lon},{fix.speed_knots:.2f},{fix.course:.1f},{date},,,A"
    return _sentence(gga) + _sentence(rmc)


class GpsDevice(_SimDevice):
    """An NMEA 0183 receiver with a fix: GGA and RMC once a second, on the second."""

    name = "sim:gps"

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        call_later: CallLater | None = None,
        utc: Clock | None = None,
    ) -> None:
        super().__init__(clock=clock, call_later=call_later)
        self._utc = utc or time.time
        self._timer: TimerHandle | None = None
        self._last_second: int | None = None
        self._counts.update(sentences=0, sentences_dropped=0)

    def _inputs(self) -> _Inputs:
        ready = self._sink is not None
        return _Inputs(cts=ready, dsr=ready)

    def _started(self) -> None:
        self._last_second = None
        self._schedule_fix()

    def _stopped(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule_fix(self) -> None:
        now = self._utc()
        self._timer = self._time.call_later(math.floor(now) + 1 - now, self._fix_due)

    def _fix_due(self) -> None:
        self._timer = None
        # asyncio may run a timer up to its clock resolution early: allow a
        # millisecond so that 12:00:00.9999999 counts as 12:00:01.
        second = math.floor(self._utc() + 0.001)
        if second != self._last_second:
            self._last_second = second
            self._emit(gps_sentences(second).encode("ascii"))
        self._schedule_fix()

    def _emit(self, sentences: bytes) -> None:
        # A receiver does not wait for its reader: sentences nobody reads, or that a
        # slow line cannot carry, are lost (a bounded backlog rides out a short stall).
        if self._paused or self._rx.pending + len(sentences) > GPS_BACKLOG:
            self._counts["dropped"] += len(sentences)
            self._counts["sentences_dropped"] += 2
            return
        self._counts["sentences"] += 2
        self._receive(sentences)


# -- sim:modem ------------------------------------------------------------------

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


class ModemDevice(_SimDevice):
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

    def _inputs(self) -> _Inputs:
        return _Inputs(cts=self._rts, dsr=self._sink is not None, dcd=self._carrier)

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


# -- Factory --------------------------------------------------------------------

SIMULATORS: dict[str, type[_SimDevice]] = {
    "echo": EchoDevice,
    "gps": GpsDevice,
    "modem": ModemDevice,
}


def open_sim(spec: str) -> Device:
    """The simulated device named by ``spec`` ("sim:echo", "sim:gps", "sim:modem"), not yet opened."""
    kind, _, which = spec.strip().partition(":")
    factory = SIMULATORS.get(which.lower()) if kind.lower() == "sim" else None
    if factory is None:
        known = ", ".join(f"sim:{name}" for name in SIMULATORS)
        raise DeviceError(f"unknown simulated device {spec!r}; known: {known}")
    return factory()
