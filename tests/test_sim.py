"""The simulated devices, driven directly with a recording sink.

Time is simulated: each device gets a :class:`SimClock` as its clock and
timer source, and the test steps it.  Pacing is therefore checked by counting
characters against the simulated schedule ("no more than the line rate allows
since the write"), never by measuring wall time.  Two tests run a device on a
real asyncio loop to check the default clock and timers.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vcom.device import DeviceError
from vcom.settings import FlowControl, LineSettings, Parity, Signals, StopBits
from vcom.sim import (
    CENTER,
    GPS_BACKLOG,
    MAX_BAUD,
    MAX_BURST,
    RX_QUEUE,
    SIMULATORS,
    TICK,
    TX_LOW_WATER,
    TX_QUEUE,
    EchoDevice,
    GpsDevice,
    ModemDevice,
    nmea_checksum,
    open_sim,
    parse_position,
)

START = 1_700_000_000.25  # 2023-11-14 22:13:20.25 UTC: a quarter past a whole second


# -- Simulated time and a recording sink ----------------------------------------


@dataclass(eq=False)
class SimTimer:
    when: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class SimClock:
    """A clock and ``call_later`` that only move when the test says so."""

    MAX_EVENTS = 200_000

    def __init__(self, start: float = START) -> None:
        self.now = start
        self._timers: list[tuple[float, int, SimTimer]] = []
        self._seq = 0

    def __call__(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> SimTimer:
        timer = SimTimer(self.now + max(0.0, delay), callback)
        self._seq += 1
        heapq.heappush(self._timers, (timer.when, self._seq, timer))
        return timer

    @property
    def active(self) -> int:
        return sum(1 for _, _, timer in self._timers if not timer.cancelled)

    def advance(self, seconds: float, *, late: bool = False) -> None:
        """Run the timers due within ``seconds``.  ``late`` runs them all at the end,
        like a loop that was blocked for that long."""
        end = self.now + seconds
        if late:
            self.now = end
        for _ in range(self.MAX_EVENTS):
            while self._timers and self._timers[0][2].cancelled:
                heapq.heappop(self._timers)
            if not self._timers or self._timers[0][0] > end:
                break
            _, _, timer = heapq.heappop(self._timers)
            self.now = max(self.now, timer.when)
            timer.callback()
        else:
            raise AssertionError("timers kept firing: a busy loop")
        self.now = end


@dataclass
class Sink:
    clock: SimClock | None = None
    data: bytearray = field(default_factory=bytearray)
    chunks: list[tuple[float, bytes]] = field(default_factory=list)
    signals: list[Signals] = field(default_factory=list)
    line_states: list[tuple[int, int]] = field(default_factory=list)  # (bytes before it, state)
    writable: int = 0
    gone: list[str] = field(default_factory=list)
    on_data: Callable[[], None] | None = None

    def device_data(self, data: bytes) -> None:
        self.data += data
        self.chunks.append((self.clock() if self.clock else 0.0, data))
        if self.on_data:
            self.on_data()

    def device_signals(self, signals: Signals) -> None:
        self.signals.append(signals)

    def device_line_state(self, state: int) -> None:
        self.line_states.append((len(self.data), state))

    def device_writable(self) -> None:
        self.writable += 1

    def device_gone(self, reason: str) -> None:
        self.gone.append(reason)

    def text(self) -> str:
        return self.data.decode("latin-1")


def started(device_class: type, settings_: LineSettings | None = None, **options: object):
    clock = SimClock()
    device = device_class(clock=clock, call_later=clock.call_later, **options)
    sink = Sink(clock)
    device.open(sink)
    if settings_ is not None:
        device.apply_settings(settings_)
    return device, sink, clock


def run_until(clock: SimClock, predicate: Callable[[], bool], limit: float, step: float = TICK) -> None:
    for _ in range(math.ceil(limit / step)):
        if predicate():
            return
        clock.advance(step)
    assert predicate(), f"not reached within {limit} simulated seconds"


# -- Settings and the factory ---------------------------------------------------


@pytest.mark.parametrize("device_class", [EchoDevice, GpsDevice, ModemDevice])
def test_every_uart_setting_is_accepted_and_reported_exactly(device_class: type) -> None:
    device, _, _ = started(device_class)
    for baud in (1, 50, 75, 9600, 250_000, 1_000_000, MAX_BAUD):
        for data_bits in (5, 6, 7, 8):
            for parity in Parity:
                for stop in StopBits:
                    for flow in FlowControl:
                        wanted = LineSettings(baud, data_bits, parity, stop, flow, FlowControl.NONE)
                        assert device.apply_settings(wanted) == wanted
                        assert device.settings == wanted
    mixed = LineSettings(123_457, 7, Parity.MARK, StopBits.ONE_POINT_FIVE, FlowControl.RTSCTS, FlowControl.XONXOFF)
    assert device.apply_settings(mixed) == mixed
    device.close()


def test_speed_above_a_uart_ceiling_is_answered_with_the_ceiling() -> None:
    device, _, _ = started(EchoDevice)
    assert device.apply_settings(LineSettings(baud=MAX_BAUD + 1)).baud == MAX_BAUD
    assert device.settings.baud == MAX_BAUD


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (LineSettings(9600), 960.0),
        (LineSettings(300, 7, Parity.EVEN, StopBits.TWO), 300 / 11),
        (LineSettings(250_000, 5, Parity.NONE, StopBits.ONE_POINT_FIVE), 250_000 / 7.5),
        (LineSettings(1, 8, Parity.SPACE), 1 / 11),
    ],
)
def test_chars_per_second_counts_start_data_parity_and_stop_bits(line: LineSettings, expected: float) -> None:
    assert line.chars_per_second == pytest.approx(expected)
    device, _, _ = started(EchoDevice, line)
    assert device.chars_per_second == pytest.approx(expected)


def test_open_sim_knows_the_three_devices() -> None:
    assert set(SIMULATORS) == {"echo", "gps", "modem"}
    for spec, device_class in (("sim:echo", EchoDevice), ("sim:gps", GpsDevice), ("SIM:Modem", ModemDevice)):
        device = open_sim(spec)
        assert isinstance(device, device_class)
        assert device.name == f"sim:{spec.split(':')[1].lower()}"


@pytest.mark.parametrize("spec", ["sim:teapot", "sim:", "echo", "/dev/ttyUSB0"])
def test_open_sim_names_the_known_devices_when_it_does_not_know_one(spec: str) -> None:
    with pytest.raises(DeviceError) as info:
        open_sim(spec)
    message = str(info.value)
    assert "sim:echo, sim:gps, sim:modem" in message
    assert "\n" not in message


def test_opening_twice_or_writing_while_closed_is_an_error() -> None:
    device, _, _ = started(EchoDevice)
    with pytest.raises(DeviceError):
        device.open(Sink())
    device.close()
    with pytest.raises(DeviceError):
        device.write(b"x")


def test_opening_outside_a_loop_without_a_clock_is_an_error() -> None:
    with pytest.raises(DeviceError, match="asyncio"):
        EchoDevice().open(Sink())


@pytest.mark.parametrize("device_class", [EchoDevice, GpsDevice, ModemDevice])
def test_close_cancels_every_timer_and_reports_nothing_more(device_class: type) -> None:
    device, sink, clock = started(device_class)
    device.set_dtr(True)
    device.write(b"AT\r" * 100)
    clock.advance(0.05)
    device.close()
    before = (bytes(sink.data), len(sink.signals))
    assert clock.active == 0
    clock.advance(5)
    assert (bytes(sink.data), len(sink.signals)) == before
    assert device.signals.dtr is False  # a closed port drops DTR, like HUPCL


# -- sim:echo -----------------------------------------------------------------


def test_echo_returns_every_byte_value_exactly() -> None:
    device, sink, clock = started(EchoDevice, LineSettings(115_200))
    payload = bytes(range(256)) * 8 + bytes(reversed(range(256))) * 8
    written = 0
    for _ in range(1000):
        written += device.write(payload[written : written + 700])
        clock.advance(TICK)
        if len(sink.data) == len(payload):
            break
    assert bytes(sink.data) == payload
    stats = device.stats
    assert stats["bytes_in"] == stats["bytes_out"] == len(payload)
    assert stats["tx_queued"] == stats["rx_queued"] == 0


@pytest.mark.parametrize("data_bits", [5, 6, 7])
def test_echo_loses_the_bits_a_short_character_cannot_carry(data_bits: int) -> None:
    device, sink, clock = started(EchoDevice, LineSettings(115_200, data_bits, Parity.EVEN))
    device.write(bytes(range(256)))
    run_until(clock, lambda: len(sink.data) == 256, 1.0)
    assert bytes(sink.data) == bytes(b % (1 << data_bits) for b in range(256))


@pytest.mark.parametrize(
    "line",
    [
        LineSettings(9600),
        LineSettings(300, 7, Parity.EVEN, StopBits.TWO),
        LineSettings(1200, 5, Parity.NONE, StopBits.ONE_POINT_FIVE),
        LineSettings(57_600, 8, Parity.ODD),
        LineSettings(250_000),
        LineSettings(MAX_BAUD),
    ],
    ids=lambda line: line.describe(),
)
def test_echo_is_paced_at_the_line_rate_in_small_batches(line: LineSettings) -> None:
    device, sink, clock = started(EchoDevice, line)
    rate = line.chars_per_second
    assert device.write(bytes(TX_QUEUE)) == TX_QUEUE
    t0 = clock.now
    step = 0.005
    for _ in range(400):  # two simulated seconds
        clock.advance(step)
        assert len(sink.data) <= math.floor((clock.now - t0) * rate + 1e-9)
    # ...and not much slower: a loopback adds at most a couple of ticks.
    expected = min(TX_QUEUE, (clock.now - t0) * rate)
    assert len(sink.data) >= min(TX_QUEUE, expected - rate * 3 * TICK - 2)
    assert max(len(chunk) for _, chunk in sink.chunks) <= rate * TICK + 1


@pytest.mark.parametrize("baud", [1, 10, 110])
def test_very_slow_lines_deliver_one_character_when_it_is_due(baud: int) -> None:
    device, sink, clock = started(EchoDevice, LineSettings(baud))
    rate = baud / 10
    device.write(b"0123456789")
    t0 = clock.now
    for _ in range(60):
        clock.advance(1.0)
        assert len(sink.data) <= math.floor((clock.now - t0) * rate + 1e-9)
    assert len(sink.data) >= min(10, math.floor(60 * rate) - 2)
    assert sink.data == b"0123456789"[: len(sink.data)]
    assert all(len(chunk) == 1 for _, chunk in sink.chunks) or baud == 110


def test_a_late_loop_gets_one_small_batch_not_a_catch_up_burst() -> None:
    device, sink, clock = started(EchoDevice)
    device.write(bytes(TX_QUEUE))
    clock.advance(1.0, late=True)  # the loop was blocked for a second
    transmitted = TX_QUEUE - device.stats["tx_queued"]
    assert 0 < transmitted <= 960 * MAX_BURST
    clock.advance(1.0)  # on time again: the line rate, not faster
    transmitted = TX_QUEUE - device.stats["tx_queued"]
    assert 960 <= transmitted <= 960 * (1.0 + MAX_BURST)
    assert len(sink.data) <= transmitted


@settings(max_examples=60, deadline=None)
@given(
    baud=st.integers(1, MAX_BAUD),
    data_bits=st.sampled_from([5, 6, 7, 8]),
    parity=st.sampled_from(list(Parity)),
    stop=st.sampled_from(list(StopBits)),
    steps=st.lists(
        st.tuples(st.integers(0, 3000), st.floats(0.0, 0.3), st.booleans()),
        min_size=1,
        max_size=30,
    ),
)
def test_echo_is_exact_and_never_faster_than_the_line_even_with_a_late_loop(
    baud: int, data_bits: int, parity: Parity, stop: StopBits, steps: list[tuple[int, float, bool]]
) -> None:
    line = LineSettings(baud, data_bits, parity, stop)
    device, sink, clock = started(EchoDevice, line)
    rate = line.chars_per_second
    sent = bytearray()
    busy_since: float | None = None  # the line has been busy since then
    delivered_before = 0
    for size, delay, late in steps:
        if busy_since is None or device.stats["tx_queued"] + device.stats["rx_queued"] == 0:
            busy_since, delivered_before = clock.now, len(sink.data)
        chunk = bytes((len(sent) + i) % 256 for i in range(size))
        sent += chunk[: device.write(chunk)]
        clock.advance(delay, late=late)
        allowed = math.floor((clock.now - busy_since) * rate + 1e-6)
        assert len(sink.data) - delivered_before <= allowed
    expected = bytes(b % (1 << data_bits) for b in sent[: len(sink.data)])
    assert bytes(sink.data) == expected


def test_echo_maps_dtr_to_dsr_and_dcd_and_rts_to_cts() -> None:
    device, sink, _ = started(EchoDevice)
    assert sink.signals == [Signals(dtr=False, rts=False, cts=False, dsr=False, dcd=False, ri=False)]
    assert device.set_dtr(True) is True
    assert sink.signals[-1] == Signals(dtr=True, rts=False, cts=False, dsr=True, dcd=True, ri=False)
    assert device.set_rts(True) is True
    assert sink.signals[-1] == Signals(dtr=True, rts=True, cts=True, dsr=True, dcd=True, ri=False)
    device.set_dtr(False)
    assert sink.signals[-1] == Signals(dtr=False, rts=True, cts=True, dsr=False, dcd=False, ri=False)
    device.set_rts(False)
    assert sink.signals[-1] == Signals(dtr=False, rts=False, cts=False, dsr=False, dcd=False, ri=False)
    assert len(sink.signals) == 5  # one report per change, none for repeats
    device.set_rts(False)
    assert len(sink.signals) == 5
    assert device.signals == sink.signals[-1]


def test_echo_returns_a_break_as_break_detected_after_the_data_before_it() -> None:
    device, sink, clock = started(EchoDevice)
    device.write(b"before")
    run_until(clock, lambda: sink.data == b"before", 1.0)
    assert device.set_break(True) is True
    device.write(b"after")  # queued behind the break, as on a UART held in break
    clock.advance(0.5)
    assert sink.line_states == []
    assert device.set_break(False) is False
    run_until(clock, lambda: len(sink.data) == 11, 1.0)
    assert sink.line_states == [(6, 0x10)]  # RFC 2217 line state: break detected
    assert bytes(sink.data) == b"beforeafter"
    assert device.stats["breaks"] == 1


def test_echo_holds_while_the_line_is_in_break() -> None:
    device, sink, clock = started(EchoDevice)
    device.set_break(True)
    device.write(b"held")
    clock.advance(1.0)
    assert sink.data == b""
    device.set_break(False)
    run_until(clock, lambda: sink.data == b"held", 1.0)


def test_rtscts_flow_control_holds_the_transmitter_until_cts() -> None:
    device, sink, clock = started(EchoDevice)
    device.apply_settings(LineSettings(9600, flow_out=FlowControl.RTSCTS, flow_in=FlowControl.RTSCTS))
    device.write(b"waits for CTS")
    clock.advance(1.0)
    assert sink.data == b""
    assert device.stats["tx_queued"] == 13
    device.set_rts(True)  # the plug wires RTS to CTS
    run_until(clock, lambda: sink.data == b"waits for CTS", 1.0)
    device.set_rts(False)
    device.write(b"again")
    clock.advance(1.0)
    assert sink.data == b"waits for CTS"
    device.apply_settings(LineSettings(9600))  # no flow control: CTS no longer matters
    run_until(clock, lambda: sink.data == b"waits for CTSagain", 1.0)


def test_write_back_pressure_and_device_writable() -> None:
    device, sink, clock = started(EchoDevice)
    assert device.write(bytes(5000)) == TX_QUEUE
    assert device.write(b"more") == 0
    # Not writable until the queue is down to the low-water mark, then once.
    queued = []
    for _ in range(1000):
        queued.append(device.stats["tx_queued"])
        clock.advance(TICK)
        if sink.writable:
            break
    assert sink.writable == 1
    assert queued[-1] > TX_LOW_WATER >= device.stats["tx_queued"]
    assert device.write(bytes(100)) == 100
    clock.advance(10)
    assert sink.writable == 1  # no short write since: no more notifications


def test_purge_transmit_drops_unsent_bytes_and_frees_the_writer() -> None:
    device, sink, clock = started(EchoDevice)
    assert device.write(bytes(TX_QUEUE)) == TX_QUEUE
    assert device.write(b"x") == 0
    clock.advance(0.1)
    device.purge(receive=True, transmit=True)
    assert sink.writable == 1
    assert device.stats["tx_queued"] == device.stats["rx_queued"] == 0
    received = len(sink.data)
    clock.advance(1.0)
    assert len(sink.data) == received
    assert 0 < received < 200


def test_echo_stops_draining_while_reading_is_paused() -> None:
    device, sink, clock = started(EchoDevice)
    device.write(b"12345")
    run_until(clock, lambda: sink.data == b"12345", 1.0)
    device.pause_reading()
    device.write(b"67890")
    clock.advance(2.0)
    assert sink.data == b"12345"
    assert device.stats["tx_queued"] == 5
    device.resume_reading()
    run_until(clock, lambda: sink.data == b"1234567890", 1.0)


def test_a_sink_that_pauses_from_its_callback_gets_nothing_more() -> None:
    device, sink, clock = started(EchoDevice)
    sink.on_data = device.pause_reading
    device.write(bytes(500))
    clock.advance(2.0)
    first = len(sink.data)
    assert 0 < first < 500
    sink.on_data = None
    device.resume_reading()
    run_until(clock, lambda: len(sink.data) == 500, 2.0)


def test_echo_on_the_running_asyncio_loop() -> None:
    payload = bytes(range(256)) * 4

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        sink = Sink()
        sink.on_data = lambda: len(sink.data) >= len(payload) and not done.done() and done.set_result(None)
        device = EchoDevice()
        device.open(sink)
        try:
            device.apply_settings(LineSettings(921_600))
            assert device.write(payload) == len(payload)
            await asyncio.wait_for(done, 10)
        finally:
            device.close()
        return bytes(sink.data)

    assert asyncio.run(main()) == payload


# -- sim:gps ------------------------------------------------------------------


def nmea_lines(data: bytes) -> list[str]:
    text = data.decode("ascii")
    assert text.endswith("\r\n")
    return text[:-2].split("\r\n")


def xor_checksum_ok(line: str) -> bool:
    """Checked here without the module's own helper."""
    body, _, given = line[1:].partition("*")
    return format(functools.reduce(operator.xor, body.encode(), 0), "02X") == given


def test_gps_sends_gga_and_rmc_once_a_second_on_the_second() -> None:
    device, sink, clock = _gps()
    clock.advance(10.5)
    lines = nmea_lines(bytes(sink.data))
    assert len(lines) == 20
    assert [line[3:6] for line in lines] == ["GGA", "RMC"] * 10
    assert all(line.startswith("$GP") and xor_checksum_ok(line) for line in lines)
    assert sink.chunks[0][0] >= math.ceil(START)  # nothing before the first whole second
    times = [line.split(",")[1] for line in lines]
    assert times[::2] == times[1::2]
    assert times[::2] == [f"2213{21 + i:02d}.00" for i in range(10)]
    assert device.stats["sentences"] == 20


def _gps(line: LineSettings | None = None) -> tuple[GpsDevice, Sink, SimClock]:
    """A GPS whose UTC clock is the simulated clock too."""
    clock = SimClock()
    device = GpsDevice(clock=clock, call_later=clock.call_later, utc=clock)
    sink = Sink(clock)
    device.open(sink)
    device.apply_settings(line or LineSettings(9600))
    return device, sink, clock


def test_gps_sentence_fields() -> None:
    device, sink, clock = _gps()
    clock.advance(1.5)
    gga, rmc = nmea_lines(bytes(sink.data))
    g = gga.split("*")[0].split(",")
    assert g[0] == "$GPGGA" and g[3] == "N" and g[5] == "E"
    assert (g[6], g[7], g[8], g[9], g[10]) == ("1", "08", "0.9", "34.0", "M")
    r = rmc.split("*")[0].split(",")
    assert r[0] == "$GPRMC" and r[2] == "A" and r[9] == "141123"
    assert r[3:7] == g[2:6]  # same position in both
    assert all(len(line) + 2 <= 82 for line in (gga, rmc))  # NMEA 0183 sentence limit


def test_gps_positions_parse_and_move_slowly_round_the_centre() -> None:
    device, sink, clock = _gps()
    clock.advance(30.5)
    positions = [parse_position(line) for line in nmea_lines(bytes(sink.data))]
    assert None not in positions
    ggas = positions[::2]
    assert ggas == positions[1::2]
    for lat, lon in ggas:
        assert abs(lat - CENTER[0]) < 0.002 and abs(lon - CENTER[1]) < 0.003
    steps = [math.dist(a, b) for a, b in zip(ggas, ggas[1:], strict=False)]
    assert all(0 < step < 0.0001 for step in steps)


def test_gps_rate_follows_the_simulated_clock_not_the_wall() -> None:
    device, sink, clock = _gps()
    clock.advance(3600.5)  # an hour of simulated time in a moment
    assert device.stats["sentences"] == 7200
    assert device.stats["dropped"] == 0


def test_gps_is_paced_and_drops_what_a_slow_line_cannot_carry() -> None:
    line = LineSettings(300)
    device, sink, clock = _gps(line)
    rate = line.chars_per_second
    t0 = clock.now
    for _ in range(600):
        clock.advance(0.1)
        assert len(sink.data) <= math.floor((clock.now - t0) * rate)
        assert device.stats["rx_queued"] <= GPS_BACKLOG
    stats = device.stats
    assert stats["dropped"] > 0 and stats["sentences_dropped"] > 0
    assert stats["bytes_out"] == len(sink.data) >= math.floor(59 * rate) - 2
    # What did arrive is whole sentences, in order, with good checksums.
    complete = sink.data[: sink.data.rfind(b"\r\n") + 2]
    assert all(xor_checksum_ok(line) for line in nmea_lines(bytes(complete)))


def test_gps_at_4800_baud_takes_about_a_third_of_a_second_per_fix() -> None:
    device, sink, clock = _gps(LineSettings(4800))
    run_until(clock, lambda: len(sink.data) > 0, 2.0, step=0.001)
    first = clock.now
    run_until(clock, lambda: sink.data.count(b"\n") == 2, 2.0, step=0.001)
    expected = len(sink.data) / LineSettings(4800).chars_per_second
    assert expected == pytest.approx(0.29, abs=0.03)
    assert clock.now - first >= expected - 2 * TICK


def test_gps_drops_and_counts_sentences_while_nobody_reads() -> None:
    device, sink, clock = _gps()
    clock.advance(2.5)
    device.pause_reading()
    clock.advance(5.0)
    assert nmea_lines(bytes(sink.data))[-1].split(",")[1] == "221322.00"
    assert device.stats["sentences_dropped"] == 10
    device.resume_reading()
    clock.advance(1.0)
    assert nmea_lines(bytes(sink.data))[-1].split(",")[1] == "221328.00"


def test_gps_lines_and_ignored_input() -> None:
    device, sink, clock = _gps()
    assert sink.signals[-1] == Signals(dtr=False, rts=False, cts=True, dsr=True, dcd=False, ri=False)
    assert device.write(b"$PUBX,00*33\r\n") == 13
    clock.advance(0.5)
    assert device.stats["bytes_in"] == 13
    assert sink.data == b""
    clock.advance(0.3)  # 50 ms into the first second's sentences
    device.purge(receive=True, transmit=False)  # the rest of them is gone
    clock.advance(0.5)
    assert device.stats["rx_queued"] == 0
    assert 0 < len(sink.data) < 140


def test_gps_on_the_running_asyncio_loop_with_the_real_utc_clock() -> None:
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        sink = Sink()
        sink.on_data = lambda: sink.data.count(b"\n") >= 2 and not done.done() and done.set_result(None)
        device = GpsDevice()
        device.open(sink)
        try:
            device.apply_settings(LineSettings(115_200))
            await asyncio.wait_for(done, 5)
        finally:
            device.close()
        return bytes(sink.data)

    lines = nmea_lines(asyncio.run(main()))
    assert [parse_position(line) is not None for line in lines[:2]] == [True, True]


def test_nmea_checksum_and_parse_position_on_a_textbook_sentence() -> None:
    line = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"
    assert nmea_checksum(line[1:-3]) == "47"
    assert parse_position(line + "\r\n") == pytest.approx((48 + 7.038 / 60, 11 + 31 / 60))
    south_west = "GNRMC,001122.00,A,3351.5000,S,15112.6000,W,0.0,0.0,010124,,,A"
    lat, lon = parse_position(f"${south_west}*{nmea_checksum(south_west)}")
    assert (lat, lon) == pytest.approx((-(33 + 51.5 / 60), -(151 + 12.6 / 60)))


@pytest.mark.parametrize(
    "line",
    [
        "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*48",  # wrong checksum
        "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",  # no checksum
        "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47",  # no $
        "",
        "garbage",
    ],
)
def test_parse_position_rejects_bad_sentences(line: str) -> None:
    assert parse_position(line) is None


@pytest.mark.parametrize(
    "body",
    [
        "GPGGA,123519,4807.038,N,01131.000,E,0,00,,,M,,M,,",  # no fix
        "GPRMC,123519,V,4807.038,N,01131.000,E,0.0,0.0,230394,,,N",  # receiver warning
        "GPGSV,1,1,01,01,40,083,46",  # not a position
        "GPGGA,123519,48x7.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",  # not a number
        "GPGGA,123519,4867.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",  # 67 minutes
        "GPGGA,123519,4807.038,Q,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",  # no hemisphere
        "GPGGA,123519",  # truncated
    ],
)
def test_parse_position_rejects_sentences_without_a_usable_position(body: str) -> None:
    assert parse_position(f"${body}*{nmea_checksum(body)}") is None


# -- sim:modem ----------------------------------------------------------------

GUARD = 0.2


def _modem(line: LineSettings | None = None) -> tuple[ModemDevice, Sink, SimClock]:
    device, sink, clock = started(ModemDevice, line or LineSettings(9600), guard_time=GUARD)
    device.set_dtr(True)
    device.set_rts(True)
    return device, sink, clock


def say(device: ModemDevice, sink: Sink, clock: SimClock, text: str, settle: float = 0.3) -> str:
    """Type ``text`` and return what the modem answered within ``settle`` simulated seconds."""
    before = len(sink.data)
    assert device.write(text.encode("latin-1")) == len(text)
    clock.advance(settle)
    return sink.data[before:].decode("latin-1")


def test_modem_command_mode_dialogue() -> None:
    device, sink, clock = _modem()
    assert say(device, sink, clock, "AT\r") == "AT\r\r\nOK\r\n"
    assert say(device, sink, clock, "ati\r") == "ati\r\r\nvcom simulated modem\r\n\r\nOK\r\n"
    assert say(device, sink, clock, "ATE0\r") == "ATE0\r\r\nOK\r\n"  # echoed before it takes effect
    assert say(device, sink, clock, "AT\r") == "\r\nOK\r\n"
    assert say(device, sink, clock, "ATFOO\r") == "\r\nERROR\r\n"
    assert say(device, sink, clock, "ATV0\r") == "0\r"
    assert say(device, sink, clock, "ATE2\r") == "4\r"
    assert say(device, sink, clock, "ATE1V1\r") == "\r\nOK\r\n"  # echo resumes after this line
    assert say(device, sink, clock, "hello\r") == "hello\r"  # no AT: not a command
    assert say(device, sink, clock, "AT S7=45 S0=0 L1 V1 X4 &c1 E1 Q0\r").endswith("\r\nOK\r\n")  # minicom
    assert say(device, sink, clock, "ATS7?\r") == "ATS7?\r\r\n045\r\n\r\nOK\r\n"
    assert say(device, sink, clock, "ATX\bZ\r") == "ATX\bZ\r\r\nOK\r\n"  # backspace edits the line
    assert say(device, sink, clock, "AT&F\r") == "AT&F\r\r\nOK\r\n"
    assert say(device, sink, clock, "ATO\r") == "ATO\r\r\nNO CARRIER\r\n"
    assert say(device, sink, clock, "ATQ1\r") == "ATQ1\r"  # quiet: no result codes
    assert say(device, sink, clock, "ATZ\r") == "ATZ\r\r\nOK\r\n"
    assert say(device, sink, clock, "AT" + "E" * 300 + "\r", settle=1.0).endswith("E\r\r\nERROR\r\n")


def test_modem_dial_data_escape_online_and_hang_up() -> None:
    device, sink, clock = _modem()
    assert device.signals.dcd is False and device.signals.dsr is True
    assert say(device, sink, clock, "ATDT5551234\r") == "ATDT5551234\r\r\nCONNECT 9600\r\n"
    assert device.signals.dcd is True and sink.signals[-1].dcd is True
    assert say(device, sink, clock, "hello AT\r") == "hello AT\r"  # data mode: the far end echoes
    # Escape: guard time of silence, +++, guard time of silence.
    assert say(device, sink, clock, "+++", settle=GUARD * 2) == "+++\r\nOK\r\n"
    assert device.signals.dcd is True  # still connected, in command mode
    assert say(device, sink, clock, "AT\r") == "AT\r\r\nOK\r\n"
    assert say(device, sink, clock, "ATO\r") == "ATO\r\r\nCONNECT 9600\r\n"
    assert say(device, sink, clock, "back online\r") == "back online\r"
    assert say(device, sink, clock, "+++", settle=GUARD * 2) == "+++\r\nOK\r\n"
    assert say(device, sink, clock, "ATH\r") == "ATH\r\r\nNO CARRIER\r\n"
    assert device.signals.dcd is False and sink.signals[-1].dcd is False
    assert say(device, sink, clock, "ATH\r") == "ATH\r\r\nOK\r\n"


def test_modem_connect_reports_the_line_speed_and_dial_in_one_write() -> None:
    device, sink, clock = _modem(LineSettings(115_200, 7, Parity.EVEN))
    assert say(device, sink, clock, "ATE0D\rdata") == "ATE0D\r\r\nCONNECT 115200\r\ndata"


def test_modem_escape_needs_silence_before_it() -> None:
    device, sink, clock = _modem()
    say(device, sink, clock, "ATD1\r")
    assert say(device, sink, clock, "abc+++", settle=GUARD * 3) == "abc+++"
    assert say(device, sink, clock, "x") == "x"


def test_modem_escape_needs_silence_after_it() -> None:
    device, sink, clock = _modem()
    say(device, sink, clock, "ATD1\r")
    before = len(sink.data)
    device.write(b"+++")
    clock.advance(GUARD / 2)
    device.write(b"AT\r")
    clock.advance(GUARD * 3)
    assert sink.data[before:] == b"+++AT\r"
    assert say(device, sink, clock, "++++", settle=GUARD * 3) == "++++"


def test_modem_escape_characters_must_follow_each_other_within_the_guard_time() -> None:
    device, sink, clock = _modem()
    say(device, sink, clock, "ATD1\r")
    for _ in range(3):
        device.write(b"+")
        clock.advance(GUARD * 1.5)
    assert sink.data.endswith(b"CONNECT 9600\r\n+++")


def test_modem_hangs_up_when_dtr_drops() -> None:
    device, sink, clock = _modem()
    say(device, sink, clock, "ATD1\r")
    before = len(sink.data)
    device.set_dtr(False)
    clock.advance(0.3)
    assert sink.data[before:] == b"\r\nNO CARRIER\r\n"
    assert device.signals.dcd is False and sink.signals[-1].dcd is False
    device.set_dtr(True)
    assert say(device, sink, clock, "AT\r") == "AT\r\r\nOK\r\n"  # back in command mode


def test_modem_ignores_dtr_with_and_d0() -> None:
    device, sink, clock = _modem()
    say(device, sink, clock, "AT&D0D1\r")
    device.set_dtr(False)
    assert say(device, sink, clock, "still here") == "still here"
    assert device.signals.dcd is True


def test_modem_lines() -> None:
    device, sink, clock = started(ModemDevice, guard_time=GUARD)
    assert sink.signals[-1] == Signals(dtr=False, rts=False, cts=False, dsr=True, dcd=False, ri=False)
    device.set_rts(True)
    assert sink.signals[-1].cts is True  # CTS follows RTS
    device.set_rts(False)
    assert sink.signals[-1].cts is False


def test_modem_obeys_rts_when_it_has_hardware_flow_control() -> None:
    device, sink, clock = _modem(LineSettings(9600, flow_in=FlowControl.RTSCTS))
    device.set_rts(False)
    device.write(b"AT\r")
    clock.advance(1.0)
    assert sink.data == b""
    assert device.stats["rx_queued"] == len(b"AT\r\r\nOK\r\n")  # the modem took the command
    device.set_rts(True)
    run_until(clock, lambda: sink.data.endswith(b"\r\nOK\r\n"), 1.0)


def test_modem_write_back_pressure_while_nobody_reads() -> None:
    device, sink, clock = _modem(LineSettings(115_200))
    say(device, sink, clock, "ATD1\r")
    device.pause_reading()
    taken = 0
    for _ in range(200):
        taken += device.write(bytes(1000))
        clock.advance(0.05)
    # The echo cannot be delivered, so input stops being taken: bounded, not lost.
    assert taken <= TX_QUEUE + RX_QUEUE + 2 * 1000
    assert device.write(b"x") == 0
    assert device.stats["rx_queued"] <= RX_QUEUE + 1000
    device.resume_reading()
    run_until(clock, lambda: sink.writable > 0, 5.0)
    assert device.write(b"x") == 1
