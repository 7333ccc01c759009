"""--emulate-baud: a vcom port takes the program's data no faster than a UART at the speed in force.

The far end is ser2net's raw accepter on a pty the test reads all the time, so that nothing but the
emulation can hold a write back: without it a 128 KiB write goes through at once.  Every figure
asserted is a lower bound set by the line rate (a busy machine can only make things slower) or a
count of bytes.
"""

from __future__ import annotations

import os
import select
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest
import serial
from peers import PYTHON, PtyDevice, Ser2net, Vcom

from vcom.port.pacer import FIFO


class Collector:
    """Reads the device end without pause, in a thread; ``data`` is everything that arrived."""

    def __init__(self, device: PtyDevice) -> None:
        self._fd = device.master
        self.data = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if select.select([self._fd], [], [], 0.05)[0]:
                try:
                    self.data += os.read(self._fd, 65536)
                except BlockingIOError:
                    continue

    def wait_for(self, count: int, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self.data) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return bytes(self.data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def line(vcom: Vcom, ser2net: Ser2net, device: PtyDevice, tmp_path: Path):
    """Makes ``(port, collector)``: a vcom port on ser2net's raw accepter, with the given options."""
    collectors: list[Collector] = []

    def make(*options: str) -> tuple[Path, Collector]:
        port = tmp_path / f"ttyV{len(collectors)}"
        vcom.add(port, ser2net.raw_target, "--connect", "always", *options)
        vcom.wait_status(port, lambda s: s["state"] == "connected", what="connected")
        collectors.append(Collector(device))
        return port, collectors[-1]

    yield make
    for collector in collectors:
        collector.close()


PAYLOAD = bytes(range(256)) * 512  # 128 KiB


def test_a_write_timeout_fires_at_a_low_speed(line, vcom: Vcom):
    """At 1200 baud 128 KiB is 109 s of line time: a 2 s write timeout must fire, and what the device
    got by then is what the line could carry plus the transmit FIFO, never the whole write."""
    port, collector = line("--emulate-baud")
    assert vcom.status(port)["emulate_baud"] is True
    with serial.Serial(str(port), 1200, write_timeout=2) as program:
        with pytest.raises(serial.SerialTimeoutException):
            program.write(PAYLOAD)
        elapsed_bound = 2 + 10  # the write's own 2 s, and generous time for the test to look
        got = collector.wait_for(FIFO, 10)
        assert len(got) < FIFO + 120 * elapsed_bound, len(got)
        assert got == PAYLOAD[:len(got)]  # in order, nothing invented
        program.reset_output_buffer()


def test_without_emulation_the_same_write_goes_through(line):
    port, collector = line()
    with serial.Serial(str(port), 1200, write_timeout=30) as program:
        assert program.write(PAYLOAD) == len(PAYLOAD)
        program.flush()
    assert collector.wait_for(len(PAYLOAD), 30) == PAYLOAD


def test_cancel_write_ends_a_write_the_line_holds_back(line, vcom: Vcom):
    """pyserial's cancel_write stops a write the line holds back.  Everything the program handed over
    reaches the device in order (pyserial's count leaves out its last write, which may be its first and
    only one: the device may get up to one write more), then the port is quiet, far short of the whole
    payload."""
    port, collector = line("--emulate-baud")
    program = serial.Serial(str(port), 57600)
    try:
        written: list[int] = []
        writer = threading.Thread(target=lambda: written.append(program.write(PAYLOAD)))
        writer.start()
        # Cancelled mid-stream: the line has carried more than the transmit FIFO vcom took at once.
        collector.wait_for(2 * FIFO, 20)
        program.cancel_write()
        writer.join(10)
        assert not writer.is_alive(), "cancel_write did not end the write"
        (count,) = written
        assert count < len(PAYLOAD)
        # At 5,760 bytes a second the pty's ~18 KiB and the FIFO come within seconds; then nothing.
        got = _settled(collector, vcom, port)
        assert count <= len(got) < len(PAYLOAD) // 2, (count, len(got))
        assert got == PAYLOAD[:len(got)]
    finally:
        program.close()


def _settled(collector: Collector, vcom: Vcom, port: Path, timeout: float = 30) -> bytes:
    """What the device got once the port has sent all it took and nothing came for a second."""
    deadline = time.monotonic() + timeout
    seen, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = len(collector.data)
        if now != seen:
            seen, since = now, time.monotonic()
        elif time.monotonic() - since >= 1 and vcom.query(port)["bytes_to_remote"] == now:
            return bytes(collector.data)
        time.sleep(0.05)
    raise AssertionError(f"the port did not settle: {seen} bytes at the device")


DRAIN = textwrap.dedent("""
    import os, sys, termios, time, tty
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[4] = attrs[5] = getattr(termios, "B" + sys.argv[3])
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    data = b"x" * int(sys.argv[2])
    start = time.monotonic()
    os.write(fd, data)
    termios.tcdrain(fd)
    print(time.monotonic() - start)
""")


@pytest.mark.parametrize("baud", [300, 19200, 115200])
def test_tcdrain_lasts_the_line_time(line, vcom: Vcom, baud: int):
    """Two seconds of line time at 8N1 (baud/10 bytes a second: 60 bytes at 300, 3,840 at 19200, 23,040 at
    115200, more than the pty and the FIFO hold): an interposed tcdrain returns no sooner (a lower bound:
    load can only add to it), and every byte has reached the device."""
    port, collector = line("--emulate-baud")
    count = baud // 10 * 2
    result = subprocess.run([PYTHON, "-m", "vcom", "wrap", PYTHON, "-c", DRAIN, str(port), str(count), str(baud)],
                            env=vcom.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) >= 2 * 0.99, result.stdout
    assert collector.wait_for(count, 10) == b"x" * count


SPEED_UP = textwrap.dedent("""
    import os, sys, termios, time, tty
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[4] = attrs[5] = termios.B300
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    assert os.write(fd, bytes(range(256)) * 40) == 10240  # the pty holds it all
    time.sleep(0.5)  # one FIFO taken; at 300 baud the next bytes would be taken in a minute
    attrs[4] = attrs[5] = termios.B115200
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    os.close(fd)  # no tcdrain: nothing but the new speed may hurry the queue
""")


def test_a_new_speed_applies_to_what_is_still_queued(line, vcom: Vcom):
    """A UART sends what is still queued at the speed set with TCSANOW: 10 KB written at 300 baud (about
    6 minutes of line time) go out at once after a switch to 115200, and the program's TCSANOW does not wait
    for the old speed."""
    port, collector = line("--emulate-baud")
    payload = bytes(range(256)) * 40
    result = subprocess.run([PYTHON, "-m", "vcom", "wrap", PYTHON, "-c", SPEED_UP, str(port)], env=vcom.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert collector.wait_for(len(payload), 30) == payload


FLUSH = textwrap.dedent("""
    import os, sys, termios, time, tty
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[4] = attrs[5] = termios.B300
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    payload = bytes(range(256)) * 40
    assert os.write(fd, payload) == len(payload)  # the pty holds it all
    time.sleep(0.5)
    termios.tcflush(fd, termios.TCOFLUSH)
    os.close(fd)
""")


@pytest.mark.parametrize("wrapped", [True, False])
def test_tcoflush_discards_what_the_line_has_not_taken(line, vcom: Vcom, wrapped: bool):
    """At 300 baud the port takes one FIFO's worth at once, then 30 bytes a second: a TCOFLUSH half a
    second after a 10 KB write leaves the device with a prefix of it, about one FIFO, as a UART would.
    Through the interposer the flush is exact; without it the kernel keeps what the pty's line discipline
    already held (up to 4 KiB more; vcom only hears of the flush when it reads)."""
    port, collector = line("--emulate-baud")
    payload = bytes(range(256)) * 40
    command = [PYTHON, "-c", FLUSH, str(port)]
    if wrapped:
        command = [PYTHON, "-m", "vcom", "wrap", *command]
    result = subprocess.run(command, env=vcom.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    got = _settled(collector, vcom, port)
    limit = FIFO + 30 * 3 + (0 if wrapped else 4096)  # the FIFO, the line's 30 B/s, the line discipline
    assert 0 < len(got) <= limit, len(got)
    assert got == payload[:len(got)]
