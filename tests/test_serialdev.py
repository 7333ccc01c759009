"""SerialDevice on real pseudo-terminals.

The test holds the pty master: ``os.read(master)`` is what the "UART"
transmitted, ``os.write(master)`` is what it receives, and ``TCGETS2`` on the
master shows the termios the device set on the slave.  Each test runs its
own asyncio loop (``asyncio.run``); every wait is bounded by a deadline.
"""

from __future__ import annotations

import asyncio
import os
import termios
import time
from collections.abc import Callable

import pytest
from peers import PtyDevice, tty_settings

from vcom import serialdev
from vcom.device import DeviceError
from vcom.serialdev import TX_BUFFER, SerialDevice, open_device
from vcom.settings import FlowControl, LineSettings, Parity, Signals, StopBits

TIMEOUT = 10.0


class Recorder:
    """A DeviceSink that keeps everything it is told."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.signals: list[Signals] = []
        self.line_states: list[int] = []
        self.writable = 0
        self.gone: list[str] = []

    def device_data(self, data: bytes) -> None:
        self.data += data

    def device_signals(self, signals: Signals) -> None:
        self.signals.append(signals)

    def device_line_state(self, state: int) -> None:
        self.line_states.append(state)

    def device_writable(self) -> None:
        self.writable += 1

    def device_gone(self, reason: str) -> None:
        self.gone.append(reason)


async def until(predicate: Callable[[], object], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def read_available(fd: int) -> bytes:
    got = bytearray()
    for _ in range(1000):
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        got += chunk
    return bytes(got)


def test_missing_path_is_one_line_error() -> None:
    with pytest.raises(DeviceError) as info:
        open_device("/dev/vcom-no-such-tty")
    assert str(info.value) == "/dev/vcom-no-such-tty: no such device"

    async def main() -> None:
        with pytest.raises(DeviceError) as info:
            SerialDevice("/dev/vcom-no-such-tty").open(Recorder())
        assert str(info.value) == "/dev/vcom-no-such-tty: no such device"

    asyncio.run(main())


def test_not_a_tty_is_refused() -> None:
    async def main() -> None:
        with pytest.raises(DeviceError, match="/dev/null: not a terminal device"):
            SerialDevice("/dev/null").open(Recorder())

    asyncio.run(main())


def test_open_device_gives_simulators_for_sim_specs() -> None:
    assert open_device("sim:echo").name == "sim:echo"
    assert isinstance(open_device("/dev/null"), SerialDevice)
    with pytest.raises(DeviceError, match="unknown simulated device"):
        open_device("sim:nothing")


def test_settings_reach_the_tty_and_what_stuck_is_returned(device: PtyDevice) -> None:
    master, path = device.master, device.path

    async def main() -> None:
        device = SerialDevice(path)
        device.open(Recorder())
        try:
            wanted = LineSettings(
                baud=250000, stop_bits=StopBits.TWO, flow_out=FlowControl.RTSCTS, flow_in=FlowControl.RTSCTS
            )
            assert device.apply_settings(wanted) == wanted
            seen = tty_settings(master)
            assert (seen.baud, seen.ispeed, seen.bother) == (250000, 250000, True)
            assert seen.cstopb and seen.crtscts
            assert device.settings == wanted

            # A pty forces CS8 and no parity: the answer is what stuck, not what was asked.
            stuck = device.apply_settings(LineSettings(baud=1200, data_bits=7, parity=Parity.EVEN))
            assert stuck == LineSettings(baud=1200)
            assert device.apply_settings(LineSettings(parity=Parity.MARK)).parity is Parity.NONE
            assert tty_settings(master).baud == 9600 and not tty_settings(master).bother

            # Software flow control per direction: IXON obeys the device, IXOFF paces it.
            out_only = device.apply_settings(LineSettings(flow_out=FlowControl.XONXOFF))
            assert (out_only.flow_out, out_only.flow_in) == (FlowControl.XONXOFF, FlowControl.NONE)
            assert (tty_settings(master).ixon, tty_settings(master).ixoff) == (True, False)
            in_only = device.apply_settings(LineSettings(flow_in=FlowControl.XONXOFF))
            assert (in_only.flow_out, in_only.flow_in) == (FlowControl.NONE, FlowControl.XONXOFF)
            assert (tty_settings(master).ixon, tty_settings(master).ixoff) == (False, True)
        finally:
            device.close()

    asyncio.run(main())


def test_close_restores_the_termios_found_at_open(device: PtyDevice) -> None:
    master, path = device.master, device.path
    attrs = termios.tcgetattr(master)
    attrs[3] |= termios.ICANON | termios.ECHO
    attrs[4] = attrs[5] = termios.B4800
    termios.tcsetattr(master, termios.TCSANOW, attrs)

    async def main() -> None:
        device = SerialDevice(path)
        device.open(Recorder())
        assert device.settings.baud == 4800  # starts from what the tty had
        assert not termios.tcgetattr(master)[3] & termios.ICANON  # raw while in use
        device.apply_settings(LineSettings(baud=115200))
        device.close()

    asyncio.run(main())
    restored = termios.tcgetattr(master)
    assert restored[4] == termios.B4800
    assert restored[3] & termios.ICANON and restored[3] & termios.ECHO


def test_data_both_ways_byte_exact_with_back_pressure(device: PtyDevice) -> None:
    master, path = device.master, device.path
    up = os.urandom(256 * 1024)  # device transmits: far more than the pty and TX_BUFFER hold
    down = os.urandom(64 * 1024)  # device receives

    async def main() -> None:
        sink = Recorder()
        device = SerialDevice(path)
        device.open(sink)
        try:
            received = bytearray()
            sent = offered = shorts = 0
            waiting_since: int | None = None  # sink.writable count when a write came back short
            deadline = time.monotonic() + TIMEOUT
            while len(received) < len(up) or len(sink.data) < len(down):
                assert time.monotonic() < deadline, f"sent {sent}, master got {len(received)}"
                if waiting_since is not None and sink.writable > waiting_since:
                    waiting_since = None
                if sent < len(up) and waiting_since is None:
                    chunk = up[sent : sent + 8192]
                    taken = device.write(chunk)
                    sent += taken
                    assert device.stats["tx_queued"] <= TX_BUFFER
                    if taken < len(chunk):
                        shorts += 1
                        waiting_since = sink.writable
                if offered < len(down):
                    try:
                        offered += os.write(master, down[offered : offered + 4096])
                    except BlockingIOError:
                        pass
                if shorts:  # the master is read only once the device has pushed back
                    received += read_available(master)
                await asyncio.sleep(0)
            received += read_available(master)
            assert bytes(received) == up
            assert bytes(sink.data) == down
            assert shorts >= 1 and sink.writable >= shorts  # back-pressure happened and was released
            assert device.stats["bytes_in"] == len(up) and device.stats["bytes_out"] == len(down)
        finally:
            device.close()

    asyncio.run(main())


def test_pause_reading_holds_input_in_the_tty(device: PtyDevice) -> None:
    master, path = device.master, device.path

    async def main() -> None:
        sink = Recorder()
        device = SerialDevice(path)
        device.open(sink)
        try:
            device.pause_reading()
            os.write(master, b"held back")
            for _ in range(20):
                await asyncio.sleep(0.005)
            assert sink.data == b""
            device.resume_reading()
            await until(lambda: sink.data == b"held back", "data after resume")
        finally:
            device.close()

    asyncio.run(main())


def test_purge_discards_both_directions(device: PtyDevice) -> None:
    master, path = device.master, device.path

    async def main() -> None:
        sink = Recorder()
        device = SerialDevice(path)
        device.open(sink)
        try:
            # Transmit: fill the pty and the device's buffer, nobody reads the master.
            accepted = 0
            for _ in range(100):
                taken = device.write(b"t" * 4096)
                accepted += taken
                if taken < 4096:
                    break
            assert device.stats["tx_queued"] > 0
            device.purge(receive=False, transmit=True)
            assert device.stats["tx_queued"] == 0
            for _ in range(10):
                await asyncio.sleep(0.005)
            assert len(read_available(master)) < accepted

            # Receive: input waiting in the tty is gone after the purge.
            device.pause_reading()
            os.write(master, b"stale")
            device.purge(receive=True, transmit=False)
            device.resume_reading()
            os.write(master, b"fresh")
            await until(lambda: b"fresh" in sink.data, "data after the purge")
            assert bytes(sink.data) == b"fresh"
            assert (device.stats["purges_tx"], device.stats["purges_rx"]) == (1, 1)
        finally:
            device.close()

    asyncio.run(main())


def test_pty_has_no_modem_lines_but_keeps_working(device: PtyDevice) -> None:
    master, path = device.master, device.path

    async def main() -> None:
        sink = Recorder()
        device = SerialDevice(path)
        device.open(sink)
        try:
            # TIOCMBIS on a pty: ENOTTY.  Not in force, state unknown, device still usable.
            assert device.set_dtr(True) is False
            assert device.set_rts(True) is False
            assert device.signals == Signals()
            # TIOCSBRK on a pty succeeds (and does nothing).
            assert device.set_break(True) is True
            assert device.set_break(False) is False
            assert device.stats["breaks"] == 1
            # No lines to read: watching does not start the shared poller.
            device.watch_signals(True)
            assert serialdev._poller_for(asyncio.get_running_loop())._timer is None
            assert device.write(b"ok") == 2
            await until(lambda: read_available(master) == b"ok", "data after the modem ioctls")
        finally:
            device.close()

    asyncio.run(main())


def test_shared_poller_ticks_only_while_a_device_is_watched() -> None:
    """TIOCMGET cannot report changes on a pty, so a stand-in device counts the polls."""

    class Watched:
        polls = 0

        def _poll_lines(self) -> None:
            self.polls += 1

    async def main() -> None:
        poller = serialdev._poller_for(asyncio.get_running_loop())
        first, second = Watched(), Watched()
        poller.add(first)  # type: ignore[arg-type]
        poller.add(second)  # type: ignore[arg-type]
        await until(lambda: first.polls >= 3 and second.polls >= 3, "polls of both devices")
        poller.discard(first)  # type: ignore[arg-type]
        assert poller._timer is not None
        polls = first.polls
        await until(lambda: second.polls >= polls + 3, "polls of the remaining device")
        assert first.polls == polls
        poller.discard(second)  # type: ignore[arg-type]
        assert poller._timer is None

    asyncio.run(main())


def test_hang_up_reports_device_gone_once_and_stops_using_the_fd(device: PtyDevice) -> None:
    master, path, far = device.master, device.path, device

    async def main() -> None:
        sink = Recorder()
        device = SerialDevice(path)
        device.open(sink)
        os.write(master, b"last words")
        await until(lambda: sink.data == b"last words", "data before the hang-up")
        far.unplug()  # the "USB unplug" of a pty
        await until(lambda: sink.gone, "device_gone")
        assert sink.gone == [f"{path}: hung up"]
        with pytest.raises(DeviceError, match="not open"):
            device.write(b"x")
        device.close()  # harmless after the device went away
        assert sink.gone == [f"{path}: hung up"]

    asyncio.run(main())
