"""``vcom share`` against independent clients on 127.0.0.1.

The share runs on its own asyncio loop in a background thread of the test
(:class:`RunningShare`); every look at it (``status()``) runs on that loop.
The device is a real pty (the test holds the master: what the share's
"UART" transmitted is read there, what it receives is written there, and
``TCGETS2`` on the master shows the termios it set) or the ``sim:echo``
simulator.  The clients are real and not ours: pyserial's RFC 2217 client,
``cyclades-ser-cli`` (an RFC 2217 client in C), plain TCP and UDP sockets,
and a hand-written telnet probe whose bytes come from RFC 2217, not from
:mod:`vcom.rfc2217`.  Every wait is bounded by a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import serial
from peers import PtyDevice, read_exact, wait_until, write_all

from vcom.device import Device
from vcom.serialdev import READ_CHUNK, TX_BUFFER, SerialDevice
from vcom.share import (
    TRANSPORT_HIGH_WATER,
    Share,
    ShareConfig,
    ShareError,
)
from vcom.share import limits as share_module

TIMEOUT = 10.0

# RFC 854 / RFC 2217 bytes, written out here so the probe does not share code with the server.
IAC, SB, SE = 255, 250, 240
COM_PORT = 44
SIGNATURE, SET_BAUDRATE, SET_CONTROL = 0, 1, 5
NOTIFY_MODEMSTATE = 7
FLOWCONTROL_SUSPEND, FLOWCONTROL_RESUME = 8, 9
SET_LINESTATE_MASK, SET_MODEMSTATE_MASK = 10, 11
SERVER = 100  # answers carry the command code plus 100


# -- Running a share -------------------------------------------------------------------


class RunningShare:
    """A Share on its own loop in a background thread."""

    def __init__(self, config: ShareConfig, device: Device | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="share-loop", daemon=True)
        self.thread.start()
        self.share = Share(config, device)

    def start(self) -> RunningShare:
        self.run(self.share.start())
        return self

    @property
    def port(self) -> int:
        return self.share.port

    def run(self, coro: Any, timeout: float = TIMEOUT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], Any]) -> Any:
        async def on_loop() -> Any:
            return fn()

        return self.run(on_loop())

    def status(self) -> dict[str, Any]:
        return self.call(self.share.status)

    def wait_status(self, predicate: Callable[[dict[str, Any]], object], what: str) -> dict[str, Any]:
        last: list[dict[str, Any]] = []

        def check() -> dict[str, Any] | None:
            last[:] = [self.status()]
            return last[0] if predicate(last[0]) else None

        try:
            return wait_until(check, TIMEOUT, what, interval=0.01)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; status: {last[0] if last else None}") from None

    def stop(self) -> None:
        try:
            if self.loop.is_running():
                self.run(self.share.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(TIMEOUT)
            self.loop.close()


@pytest.fixture
def start_share() -> Iterator[Callable[..., RunningShare]]:
    """Start shares; every one is closed, and its loop stopped, after the test."""
    running: list[RunningShare] = []

    def start(config: ShareConfig, device: Device | None = None) -> RunningShare:
        runner = RunningShare(config, device)
        running.append(runner)
        return runner.start()

    yield start
    for runner in reversed(running):
        runner.stop()


@pytest.fixture
def pty_share(device: PtyDevice, start_share: Callable[..., RunningShare]) -> Callable[..., RunningShare]:
    """A share of the pty ``device`` through a SerialDevice; options as ShareConfig fields."""

    def start(**options: Any) -> RunningShare:
        return start_share(ShareConfig(device=device.path, **options), SerialDevice(device.path))

    return start


@pytest.fixture
def sockets() -> Iterator[Callable[..., socket.socket]]:
    """Client sockets to 127.0.0.1, all closed after the test."""
    opened: list[socket.socket] = []

    def connect(port: int, *, kind: int = socket.SOCK_STREAM, rcvbuf: int | None = None) -> socket.socket:
        sock = socket.socket(socket.AF_INET, kind)
        opened.append(sock)
        if rcvbuf is not None:  # before connect, so the advertised window stays small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(TIMEOUT)
        sock.connect(("127.0.0.1", port))
        return sock

    yield connect
    for sock in opened:
        sock.close()


@pytest.fixture
def rfc2217_client() -> Iterator[Callable[..., serial.Serial]]:
    """pyserial's RFC 2217 client; every port it opens is closed after the test."""
    ports: list[serial.Serial] = []

    def open_(port: int, **options: Any) -> serial.Serial:
        ser = serial.serial_for_url(f"rfc2217://127.0.0.1:{port}", timeout=TIMEOUT, **options)
        ports.append(ser)
        return ser

    yield open_
    for ser in ports:
        ser.close()


def recv_exact(sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    deadline = time.monotonic() + TIMEOUT
    while len(got) < n:
        assert time.monotonic() < deadline, f"received {len(got)} of {n} bytes"
        chunk = sock.recv(n - len(got))
        assert chunk, f"connection closed after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


def recv_until_closed(sock: socket.socket) -> bytes:
    """Everything until the server closes (EOF or reset), bounded by the deadline."""
    got = bytearray()
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(got)
        if not chunk:
            return bytes(got)
        got += chunk
    raise AssertionError(f"connection still open after {len(got)} bytes")


class TelnetProbe:
    """A minimal RFC 2217 client made of raw bytes: sends subnegotiations, collects answers."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = bytearray()
        self.answers: list[tuple[int, bytes]] = []
        self._raw = bytearray()
        # Agree to COM-PORT-OPTION (RFC 2217: the client sends WILL 44) and to BINARY both ways.
        sock.sendall(bytes([IAC, 251, COM_PORT, IAC, 251, 0, IAC, 253, 0]))

    def send(self, command: int, value: bytes = b"") -> None:
        escaped = value.replace(b"\xff", b"\xff\xff")
        self.sock.sendall(bytes([IAC, SB, COM_PORT, command]) + escaped + bytes([IAC, SE]))

    def expect(self, command: int) -> bytes:
        """The value of the next answer ``command + 100`` (earlier ones are consumed)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            for index, (code, value) in enumerate(self.answers):
                if code == command + SERVER:
                    del self.answers[: index + 1]
                    return value
            assert time.monotonic() < deadline, f"no answer to command {command}; got {self.answers}"
            self._raw += self.sock.recv(4096)
            self._parse()

    def wait_data(self, n: int) -> bytes:
        """Read until ``n`` bytes of user data arrived (answers are kept for ``expect``)."""
        deadline = time.monotonic() + TIMEOUT
        while len(self.data) < n:
            assert time.monotonic() < deadline, f"got {len(self.data)} of {n} data bytes"
            self._raw += self.sock.recv(4096)
            self._parse()
        return bytes(self.data)

    def _parse(self) -> None:
        raw, i = self._raw, 0
        while i < len(raw):
            if raw[i] != IAC:
                self.data.append(raw[i])
                i += 1
                continue
            if i + 1 >= len(raw):
                break
            verb = raw[i + 1]
            if verb == IAC:
                self.data.append(IAC)
                i += 2
            elif verb == SB:
                end = self._subnegotiation_end(i + 2)
                if end < 0:
                    break
                body = bytes(raw[i + 2 : end]).replace(b"\xff\xff", b"\xff")
                if body[:1] == bytes([COM_PORT]) and len(body) >= 2:
                    self.answers.append((body[1], body[2:]))
                i = end + 2
            elif verb in (251, 252, 253, 254):
                if i + 2 >= len(raw):
                    break
                i += 3
            else:
                i += 2
        del raw[:i]

    def _subnegotiation_end(self, start: int) -> int:
        j = start
        while j + 1 < len(self._raw):
            if self._raw[j] == IAC:
                if self._raw[j + 1] == SE:
                    return j
                j += 2
            else:
                j += 1
        return -1


# -- Configuration -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"device": "ttyUSB0"}, "device 'ttyUSB0' must be an absolute path such as /dev/ttyUSB0 or sim:echo"),
        ({"listen_host": "not a host"}, "listen address 'not a host' is not an IP address or host name"),
        ({"listen_port": 70000}, "listen_port 70000 must be a port number between 0 and 65535"),
        ({"protocol": "http"}, "protocol 'http' must be one of rfc2217, tcp, udp"),
        ({"slow_client": "wait"}, "slow_client 'wait' must be one of drop, disconnect"),
        ({"client_buffer": 10}, "client_buffer 10 must be a number of bytes between 1024 and 67108864"),
        ({"control": "last"}, "control 'last' must be one of all, first"),
        ({"max_clients": 0}, "max_clients 0 must be a whole number between 1 and 1024"),
        ({"max_clients": True}, "max_clients True must be a whole number between 1 and 1024"),
    ],
)
def test_config_is_validated_with_one_line_messages(changes: dict[str, Any], message: str) -> None:
    values: dict[str, Any] = {"device": "/dev/ttyUSB0", **changes}
    with pytest.raises(ShareError) as info:
        ShareConfig(**values)
    assert str(info.value) == message


def test_config_json_round_trip_and_errors() -> None:
    config = ShareConfig(device="sim:gps", listen_host="::", listen_port=4001, protocol="udp", control="first")
    assert ShareConfig.from_json(config.to_json()) == config
    assert config.listen == "[::]:4001"
    assert ShareConfig.from_json({"device": "/dev/ttyS0"}) == ShareConfig(device="/dev/ttyS0")
    with pytest.raises(ShareError, match="^unknown share setting\\(s\\) colour, speed$"):
        ShareConfig.from_json({"device": "/dev/ttyS0", "speed": 9600, "colour": "red"})
    with pytest.raises(ShareError, match="^a share needs a 'device'$"):
        ShareConfig.from_json({"listen_port": 1})


def test_start_fails_with_one_line_reasons(device: PtyDevice, start_share: Callable[..., RunningShare]) -> None:
    with pytest.raises(ShareError) as info:
        start_share(ShareConfig(device="/dev/vcom-no-such-tty"))
    assert str(info.value) == "/dev/vcom-no-such-tty: no such device"

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ShareError) as info:
            start_share(ShareConfig(device=device.path, listen_port=port), SerialDevice(device.path))
        assert str(info.value) == f"cannot listen on 127.0.0.1:{port}: address already in use"
    # The device was released: another share can open it.
    assert start_share(ShareConfig(device=device.path), SerialDevice(device.path)).status()["device_state"] == "open"


# -- pyserial's RFC 2217 client against a tty -----------------------------------------------


def test_pyserial_settings_reach_the_device_and_are_restored(
    device: PtyDevice, pty_share: Callable[..., RunningShare], rfc2217_client: Callable[..., serial.Serial]
) -> None:
    before = device.settings()
    running = pty_share()
    ser = rfc2217_client(running.port, baudrate=250000, stopbits=serial.STOPBITS_TWO, rtscts=True)
    seen = device.settings()
    assert (seen.baud, seen.ispeed, seen.bother, seen.cstopb, seen.crtscts) == (250000, 250000, True, True, True)
    assert running.status()["settings"] == {
        "baud": 250000,
        "data_bits": 8,
        "parity": "none",
        "stop_bits": "2",
        "flow_out": "rtscts",
        "flow_in": "rtscts",
    }

    # Changes while open: pyserial waits for each answer and raises if it differs.
    ser.baudrate = 115200
    ser.rtscts = False
    ser.xonxoff = True
    ser.stopbits = serial.STOPBITS_ONE
    seen = device.settings()
    assert (seen.baud, seen.bother, seen.cstopb, seen.crtscts, seen.ixon, seen.ixoff) == (
        115200,
        False,
        False,
        False,
        True,
        True,
    )
    assert ser.get_settings()["baudrate"] == 115200 and ser.xonxoff

    # The last client leaving restores what the device had before.
    ser.close()
    wait_until(lambda: device.settings() == before, TIMEOUT, "settings restored after the client left")
    assert running.status()["clients"] == []


def test_pyserial_is_answered_with_what_the_device_keeps(
    device: PtyDevice, pty_share: Callable[..., RunningShare], rfc2217_client: Callable[..., serial.Serial]
) -> None:
    running = pty_share()
    # A pty forces 8N1: the server answers SET-PARITY with "none", which pyserial reports as a refusal.
    with pytest.raises(ValueError, match="remote rejected value for option 'parity'"):
        rfc2217_client(running.port, parity=serial.PARITY_EVEN)
    # DTR/RTS cannot be read back from a pty: answered with the level set, so the port opens.
    ser = rfc2217_client(running.port)
    ser.dtr = False
    ser.rts = False
    ser.dtr = True
    assert ser.is_open
    assert running.status()["signals"]["dtr"] is None  # and status says the truth: unknown


def test_pyserial_data_both_ways_byte_exact(
    device: PtyDevice, pty_share: Callable[..., RunningShare], rfc2217_client: Callable[..., serial.Serial]
) -> None:
    running = pty_share()
    ser = rfc2217_client(running.port, baudrate=115200)
    ser.write(b"sync")
    assert device.read_exact(4) == b"sync"

    down = os.urandom(64 * 1024)  # device to client; 0xFF bytes test IAC doubling
    device.write(down)
    assert ser.read(len(down)) == down

    up = os.urandom(64 * 1024)  # client to device, read from the master while sending
    got = bytearray()
    for start in range(0, len(up), 4096):
        ser.write(up[start : start + 4096])
        got += device.drain()
    got += device.read_exact(len(up) - len(got))
    assert bytes(got) == up
    client = running.status()["clients"][0]
    assert (client["bytes_in"], client["bytes_out"]) == (len(up) + 4, len(down))
    assert client["com_port"] is True


def test_pyserial_purge_reaches_the_device(
    device: PtyDevice, pty_share: Callable[..., RunningShare], rfc2217_client: Callable[..., serial.Serial]
) -> None:
    running = pty_share()
    ser = rfc2217_client(running.port)
    opened = running.status()["device_stats"]  # pyserial purges both buffers when it opens
    ser.reset_input_buffer()  # PURGE-DATA 1; pyserial raises unless it is answered with 1
    ser.reset_output_buffer()  # PURGE-DATA 2
    stats = running.status()["device_stats"]
    assert stats["purges_rx"] == opened["purges_rx"] + 1
    assert stats["purges_tx"] == opened["purges_tx"] + 1


# -- A hand-written RFC 2217 probe --------------------------------------------------------


def test_probe_signature_iac_in_values_and_modem_mask(
    device: PtyDevice, pty_share: Callable[..., RunningShare], sockets: Callable[..., socket.socket]
) -> None:
    running = pty_share()
    probe = TelnetProbe(sockets(running.port))

    probe.send(SIGNATURE)  # empty: "tell me yours"
    assert probe.expect(SIGNATURE) == f"vcom {device.path}".encode()
    probe.send(SIGNATURE, b"probe 1.0")  # ours
    running.wait_status(lambda s: s["clients"][0]["signature"] == "probe 1.0", "client signature stored")

    # 131071 = 00 01 FF FF: both 0xFF must be doubled on the wire each way.
    probe.send(SET_BAUDRATE, struct.pack("!I", 131071))
    assert probe.expect(SET_BAUDRATE) == struct.pack("!I", 131071)
    assert device.settings().baud == 131071
    probe.send(SET_BAUDRATE, struct.pack("!I", 0))  # query
    assert probe.expect(SET_BAUDRATE) == struct.pack("!I", 131071)

    probe.send(SET_CONTROL, bytes([18]))  # DTR flow control: not possible, answered with the flow in force
    assert probe.expect(SET_CONTROL) == bytes([1])

    probe.send(SET_MODEMSTATE_MASK, bytes([0x30]))
    assert probe.expect(SET_MODEMSTATE_MASK) == bytes([0x30])
    assert probe.expect(NOTIFY_MODEMSTATE) == bytes([0])  # the current state follows the mask
    probe.send(SET_LINESTATE_MASK, bytes([0x10]))
    assert probe.expect(SET_LINESTATE_MASK) == bytes([0x10])


def test_flowcontrol_suspend_holds_data_for_that_client_only(
    device: PtyDevice, pty_share: Callable[..., RunningShare], sockets: Callable[..., socket.socket]
) -> None:
    running = pty_share()
    suspended = TelnetProbe(sockets(running.port))
    other = TelnetProbe(sockets(running.port))
    running.wait_status(lambda s: len(s["clients"]) == 2, "two clients")
    suspended.send(FLOWCONTROL_SUSPEND)
    running.wait_status(lambda s: s["clients"][0]["suspended"], "suspend applied")

    device.write(b"while suspended")
    assert other.wait_data(15) == b"while suspended"
    held = running.wait_status(lambda s: s["clients"][0]["queued"] == 15, "data queued for the suspended client")
    assert held["clients"][0]["bytes_out"] == 0

    suspended.send(FLOWCONTROL_RESUME)
    assert suspended.wait_data(15) == b"while suspended"


def test_control_first_answers_others_with_the_value_in_force(
    device: PtyDevice,
    pty_share: Callable[..., RunningShare],
    rfc2217_client: Callable[..., serial.Serial],
    sockets: Callable[..., socket.socket],
) -> None:
    running = pty_share(control="first")
    first = rfc2217_client(running.port, baudrate=9600)
    # pyserial compares the answer with what it asked: 9600 back for 19200 is a refusal.
    with pytest.raises(ValueError, match="remote rejected value for option 'baudrate'"):
        rfc2217_client(running.port, baudrate=19200)
    assert device.settings().baud == 9600

    probe = TelnetProbe(sockets(running.port))
    probe.send(SET_BAUDRATE, struct.pack("!I", 57600))
    assert probe.expect(SET_BAUDRATE) == struct.pack("!I", 9600)
    assert device.settings().baud == 9600

    # Once the first client leaves, the probe is the longest connected and takes control.
    first.close()
    running.wait_status(lambda s: len(s["clients"]) == 1, "first client gone")
    probe.send(SET_BAUDRATE, struct.pack("!I", 57600))
    assert probe.expect(SET_BAUDRATE) == struct.pack("!I", 57600)
    assert device.settings().baud == 57600


def test_full_device_holds_every_client_back_and_loses_nothing(
    device: PtyDevice, pty_share: Callable[..., RunningShare], sockets: Callable[..., socket.socket]
) -> None:
    running = pty_share(protocol="tcp")
    # Two senders with disjoint byte values, so the device's stream can be split back apart.
    low = bytes(b & 0x7F for b in os.urandom(128 * 1024))
    high = bytes(b | 0x80 for b in os.urandom(128 * 1024))
    one, two = sockets(running.port), sockets(running.port)
    running.wait_status(lambda s: len(s["clients"]) == 2, "two clients")
    one.sendall(low)  # more than the pty and the device buffer hold; nobody reads the master yet
    two.sendall(high)
    full = running.wait_status(lambda s: s["device_full"], "device full")
    assert 0 < full["device_stats"]["tx_queued"] <= TX_BUFFER  # the kernel takes more as the pty moves it on

    got = device.read_exact(len(low) + len(high), timeout=4 * TIMEOUT)
    assert bytes(b for b in got if b < 0x80) == low
    assert bytes(b for b in got if b >= 0x80) == high
    status = running.wait_status(lambda s: not s["device_full"], "device drained")
    assert [c["bytes_in"] for c in status["clients"]] == [len(low), len(high)]


def test_settings_wait_for_the_data_sent_before_them(
    device: PtyDevice, pty_share: Callable[..., RunningShare], sockets: Callable[..., socket.socket]
) -> None:
    running = pty_share()
    probe = TelnetProbe(sockets(running.port))
    before = device.settings().baud
    data = bytes(b & 0x7F for b in os.urandom(128 * 1024))  # no 0xFF: sent as is
    probe.sock.sendall(data)
    probe.send(SET_BAUDRATE, struct.pack("!I", 57600))
    running.wait_status(lambda s: s["device_full"], "device full")
    # Take the data out of the "UART" in small steps.  At every step the new rate may be in force
    # only once the device has taken every byte sent before it.
    got = bytearray()
    while len(got) < len(data):
        baud = device.settings().baud
        taken = running.status()["clients"][0]["bytes_in"]
        if baud != before:
            assert taken == len(data), f"{baud} baud in force with {len(data) - taken} earlier bytes not yet taken"
        elif not got:
            assert taken < len(data)  # the first look was made while the data was still waiting
        got += device.read_exact(min(4096, len(data) - len(got)), timeout=4 * TIMEOUT)
    assert bytes(got) == data
    assert probe.expect(SET_BAUDRATE) == struct.pack("!I", 57600)
    assert device.settings().baud == 57600


# -- cyclades-ser-cli ----------------------------------------------------------------------


@pytest.fixture
def cyclades(tmp_path: Path, device: PtyDevice, pty_share: Callable[..., RunningShare]) -> Iterator[tuple]:
    """cyclades-ser-cli connected to a share of ``device``; yields (share, its pty symlink)."""
    if shutil.which("cyclades-ser-cli") is None:
        pytest.skip("cyclades-ser-cli is not installed")
    running = pty_share()
    port = running.port
    # cyclades-ser-cli silently fails on a long pty link path (about 64 characters): keep it short.
    short = Path(tempfile.mkdtemp(prefix="vc-cyc-"))
    link = short / "cyc0"
    log = open(tmp_path / "cyclades.log", "wb")
    # "-p BASE" and port 1 connect to BASE + 1; -x: foreground, log to stdout; -m 1: ignore DCD
    # (a pty has none, and cyclades-ser-cli would otherwise hold the port closed).
    process = subprocess.Popen(
        ["cyclades-ser-cli", "-x", "-d", "3", "-m", "1", "-p", str(port - 1), str(link), "127.0.0.1", "1"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: link.is_symlink(), TIMEOUT, "cyclades-ser-cli's pty link")
        running.wait_status(lambda s: any(c["com_port"] for c in s["clients"]), "cyclades-ser-cli connected")
        yield running, link, tmp_path
    finally:
        process.terminate()
        try:
            process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(TIMEOUT)
        log.close()
        shutil.rmtree(short, ignore_errors=True)


def test_cyclades_ser_cli_settings_and_data(device: PtyDevice, cyclades: tuple) -> None:
    running, link, workdir = cyclades
    fd = os.open(link, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        tty.setraw(fd)
        # Data both ways; 0xFF must be escaped by cyclades-ser-cli and by the share.
        payload = bytes(range(256)).replace(b"\r", b"") * 16  # without BINARY, CR is telnet's CR NUL
        write_all(fd, payload)
        assert device.read_exact(len(payload)) == payload
        device.write(payload)
        assert read_exact(fd, len(payload)) == payload

        # cyclades-ser-cli learns of tcsetattr through its preload library, which only
        # serves ports listed in /etc/cyclades-devices: give stty a private copy of that file.
        if shutil.which("unshare") is None:
            pytest.skip("unshare is needed to give the preload library its device table")
        table = workdir / "cyclades-devices"
        table.write_text(f"{link}:path:127.0.0.1:1:rtelnet:\n")
        script = (
            f"mount --bind {table} /etc/cyclades-devices && "
            f"LD_PRELOAD=/usr/lib/libcyclades-ser-cli.so stty -F {link} 57600 cstopb"
        )
        result = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, timeout=TIMEOUT)
        if b"mount" in result.stderr or b"unshare" in result.stderr:
            pytest.skip(f"no private mount namespace here: {result.stderr.decode().strip()}")
        wait_until(
            lambda: device.settings().baud == 57600 and device.settings().cstopb,
            TIMEOUT,
            "stty on the cyclades-ser-cli port reaching the device",
        )
        assert running.status()["settings"]["baud"] == 57600
    finally:
        os.close(fd)


# -- Many raw TCP clients -------------------------------------------------------------------


def _fast_and_slow_transfer(
    device: PtyDevice,
    running: RunningShare,
    fast: list[socket.socket],
    total: int,
    on_progress: Callable[[dict[str, Any]], None],
) -> list[bytes]:
    """Write ``total`` random bytes into the device while ``fast`` clients read everything.

    The writer never runs more than WINDOW ahead of the slowest fast reader, so their
    queues stay small whatever the scheduling; the slow client is left to fall behind.
    """
    window = 8192
    payload = os.urandom(total)
    received = [bytearray() for _ in fast]
    sent = 0
    next_check = 0
    deadline = time.monotonic() + 4 * TIMEOUT
    for sock in fast:
        sock.setblocking(False)
    while any(len(r) < total for r in received):
        assert time.monotonic() < deadline, f"sent {sent}, received {[len(r) for r in received]}"
        writers = [device.master] if sent < total and min(map(len, received)) >= sent - window else []
        readable, writable, _ = select.select(fast, writers, [], 0.2)
        if writable:
            with contextlib.suppress(BlockingIOError):
                sent += os.write(device.master, payload[sent : sent + 4096])
        for index, sock in enumerate(fast):
            if sock in readable:
                with contextlib.suppress(BlockingIOError):
                    received[index] += sock.recv(65536)
        if sent >= next_check:
            next_check += 64 * 1024
            on_progress(running.status())
    assert all(bytes(r) == payload for r in received)
    return [bytes(r) for r in received]


def test_slow_client_drops_oldest_and_never_stalls_the_others(
    device: PtyDevice, pty_share: Callable[..., RunningShare], sockets: Callable[..., socket.socket]
) -> None:
    buffer = 16384
    running = pty_share(protocol="tcp", client_buffer=buffer)
    fast = [sockets(running.port) for _ in range(4)]
    sockets(running.port, rcvbuf=4096)  # the slow client: it never reads
    running.wait_status(lambda s: len(s["clients"]) == 5, "five clients")
    bound = buffer + TRANSPORT_HIGH_WATER + 2 * READ_CHUNK
    largest = [0]

    def check(status: dict[str, Any]) -> None:
        queued = status["clients"][4]["queued"]
        largest[0] = max(largest[0], queued)
        assert queued <= bound, f"slow client's queue {queued} exceeds {bound}"

    total = 1024 * 1024
    _fast_and_slow_transfer(device, running, fast, total, check)
    status = running.status()
    check(status)
    slow_client = status["clients"][4]
    assert slow_client["dropped"] > 0
    assert slow_client["bytes_out"] + slow_client["dropped"] + slow_client["queued"] >= total
    assert all(c["dropped"] == 0 and c["bytes_out"] == total for c in status["clients"][:4])
    assert status["device_paused"] is False and status["slow_disconnects"] == 0


def test_slow_client_is_disconnected_under_the_disconnect_policy(
    device: PtyDevice, pty_share: Callable[..., RunningShare], sockets: Callable[..., socket.socket]
) -> None:
    running = pty_share(protocol="tcp", client_buffer=16384, slow_client="disconnect")
    fast = [sockets(running.port) for _ in range(4)]
    slow = sockets(running.port, rcvbuf=4096)
    running.wait_status(lambda s: len(s["clients"]) == 5, "five clients")

    _fast_and_slow_transfer(device, running, fast, 1024 * 1024, lambda status: None)
    status = running.status()
    assert len(status["clients"]) == 4 and status["slow_disconnects"] == 1
    recv_until_closed(slow)  # it sees the end of its connection after what was already sent


def test_device_is_held_back_when_every_client_is_full(
    device: PtyDevice, pty_share: Callable[..., RunningShare], sockets: Callable[..., socket.socket]
) -> None:
    running = pty_share(protocol="tcp", client_buffer=16384)
    only = sockets(running.port, rcvbuf=4096)
    running.wait_status(lambda s: len(s["clients"]) == 1, "one client")

    # Write until the share says it stopped reading the device, then until the pty is full: the
    # share no longer reads, so the writes stop being taken (a share that kept reading would take
    # the whole payload and drop for the client instead).
    payload = os.urandom(4 * 1024 * 1024)
    sent = 0
    paused = False
    deadline = time.monotonic() + 4 * TIMEOUT
    while True:
        assert sent < len(payload), f"the device was never held back ({sent} bytes taken)"
        assert time.monotonic() < deadline, f"neither paused nor full after {sent} bytes"
        try:
            sent += os.write(device.master, payload[sent : sent + 4096])
            continue
        except BlockingIOError:
            pass
        if paused:
            break  # the share stopped reading and the pty is full
        paused = running.status()["device_paused"]
        select.select([], [device.master], [], 0.05)  # a bound on the wait, not a time that decides
    status = running.status()
    assert status["device_paused"] is True
    assert status["clients"][0]["dropped"] == 0

    # The client catches up: every byte arrives, none was dropped.
    got = bytearray()
    only.settimeout(TIMEOUT)
    deadline = time.monotonic() + 4 * TIMEOUT
    while len(got) < len(payload):
        assert time.monotonic() < deadline, f"received {len(got)} of {len(payload)}"
        got += only.recv(65536)
        if sent < len(payload):
            with contextlib.suppress(BlockingIOError):
                sent += os.write(device.master, payload[sent : sent + 65536])
    assert bytes(got) == payload
    assert running.status()["clients"][0]["dropped"] == 0


def test_one_client_too_many_is_refused(
    device: PtyDevice, pty_share: Callable[..., RunningShare], sockets: Callable[..., socket.socket]
) -> None:
    running = pty_share(protocol="tcp", max_clients=2)
    first, second = sockets(running.port), sockets(running.port)
    running.wait_status(lambda s: len(s["clients"]) == 2, "two clients")
    third = sockets(running.port)
    assert recv_until_closed(third) == b""
    status = running.wait_status(lambda s: s["refused_clients"] == 1, "refusal counted")
    assert len(status["clients"]) == 2
    # The admitted ones still work both ways.
    device.write(b"to all")
    assert recv_exact(first, 6) == b"to all" and recv_exact(second, 6) == b"to all"
    second.sendall(b"from two")
    assert device.read_exact(8) == b"from two"


def test_device_gone_disconnects_clients_and_comes_back_when_replugged(
    tmp_path: Path,
    make_device: Callable[[], PtyDevice],
    start_share: Callable[..., RunningShare],
    sockets: Callable[..., socket.socket],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The share is given a symlink, as udev makes /dev/serial/by-id/...; a "replug" re-points it."""
    monkeypatch.setattr(share_module, "REOPEN_INTERVAL", 0.05)
    first = make_device()
    link = tmp_path / "ttyUSB-by-id"
    link.symlink_to(first.path)
    running = start_share(ShareConfig(device=str(link), protocol="tcp"), SerialDevice(str(link)))
    client = sockets(running.port)
    running.wait_status(lambda s: len(s["clients"]) == 1, "client connected")

    first.unplug()
    assert recv_until_closed(client) == b""
    status = running.wait_status(lambda s: s["device_state"] == "gone", "device gone")
    assert status["device_error"] == f"{link}: hung up" and status["clients"] == []
    assert recv_until_closed(sockets(running.port)) == b""  # nothing to serve while it is gone
    running.wait_status(lambda s: s["refused_clients"] == 1, "refusal while gone")

    second = make_device()
    link.unlink()
    link.symlink_to(second.path)
    running.wait_status(lambda s: s["device_state"] == "open", "device reopened")
    again = sockets(running.port)
    running.wait_status(lambda s: len(s["clients"]) == 1, "client of the new device")
    again.sendall(b"back")
    assert second.read_exact(4) == b"back"


# -- UDP ---------------------------------------------------------------------------------


def test_udp_clients_receive_device_data_in_small_datagrams(
    device: PtyDevice,
    pty_share: Callable[..., RunningShare],
    sockets: Callable[..., socket.socket],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running = pty_share(protocol="udp")
    one = sockets(running.port, kind=socket.SOCK_DGRAM)
    two = sockets(running.port, kind=socket.SOCK_DGRAM)
    one.send(b"one ")
    assert device.read_exact(4) == b"one "
    two.send(b"two")
    assert device.read_exact(3) == b"two"
    running.wait_status(lambda s: len(s["clients"]) == 2, "two UDP clients")

    payload = os.urandom(3000)
    device.write(payload)
    for sock in (one, two):
        got = bytearray()
        sizes = []
        while len(got) < len(payload):
            datagram = sock.recv(65536)
            sizes.append(len(datagram))
            got += datagram
        assert bytes(got) == payload  # loopback neither loses nor reorders
        assert max(sizes) <= 1024

    # Clients that stay silent are forgotten.
    monkeypatch.setattr(share_module, "UDP_CLIENT_TTL", 0.2)
    one.send(b"!")  # a datagram reschedules the expiry with the short lifetime
    assert device.read_exact(1) == b"!"
    running.wait_status(lambda s: s["clients"] == [], "UDP clients expired")


def test_udp_newcomer_replaces_the_least_recently_heard_client(
    device: PtyDevice, pty_share: Callable[..., RunningShare], sockets: Callable[..., socket.socket]
) -> None:
    running = pty_share(protocol="udp", max_clients=1)
    old = sockets(running.port, kind=socket.SOCK_DGRAM)
    new = sockets(running.port, kind=socket.SOCK_DGRAM)
    old.send(b"a")
    assert device.read_exact(1) == b"a"
    new.send(b"b")
    assert device.read_exact(1) == b"b"
    status = running.wait_status(lambda s: len(s["clients"]) == 1, "one UDP client")
    assert status["clients"][0]["peer"] == f"127.0.0.1:{new.getsockname()[1]}"
    device.write(b"only for the newcomer")
    assert new.recv(65536) == b"only for the newcomer"


# -- sim:echo --------------------------------------------------------------------------------


def test_pyserial_sees_modem_lines_break_and_echo_of_sim_echo(
    start_share: Callable[..., RunningShare], rfc2217_client: Callable[..., serial.Serial]
) -> None:
    running = start_share(ShareConfig(device="sim:echo"))
    ser = rfc2217_client(running.port, baudrate=115200)
    # The loopback plug wires RTS to CTS and DTR to DSR and DCD; pyserial raised both on open.
    wait_until(lambda: ser.cts and ser.dsr and ser.cd, TIMEOUT, "CTS, DSR and DCD on")
    ser.dtr = False
    wait_until(lambda: not ser.dsr and not ser.cd, TIMEOUT, "DSR and DCD off after DTR off")
    assert ser.cts
    ser.rts = False
    wait_until(lambda: not ser.cts, TIMEOUT, "CTS off after RTS off")
    ser.dtr = ser.rts = True
    wait_until(lambda: ser.cts and ser.dsr and ser.cd, TIMEOUT, "lines back on")

    ser.write(b"echo me")
    assert ser.read(7) == b"echo me"

    # The RFC's initial LINESTATE-MASK is 0: ask for break notifications first.
    from serial.rfc2217 import SET_LINESTATE_MASK as PYSERIAL_SET_LINESTATE_MASK

    ser.rfc2217_send_subnegotiation(PYSERIAL_SET_LINESTATE_MASK, bytes([0x10]))
    ser.break_condition = True
    ser.break_condition = False
    # pyserial keeps the last NOTIFY-LINESTATE but has no public reader for it.
    wait_until(lambda: ser._linestate & 0x10, TIMEOUT, "break-detected line state")
    assert running.status()["device_stats"]["breaks"] == 1


def test_dtr_and_rts_follow_the_first_and_last_client(
    start_share: Callable[..., RunningShare], sockets: Callable[..., socket.socket]
) -> None:
    running = start_share(ShareConfig(device="sim:echo", protocol="tcp"))
    assert running.status()["signals"]["dtr"] is False  # idle: lines down
    first = sockets(running.port)
    running.wait_status(lambda s: s["signals"]["dtr"] and s["signals"]["rts"], "DTR and RTS up")
    second = sockets(running.port)
    running.wait_status(lambda s: len(s["clients"]) == 2, "two clients")
    first.close()
    status = running.wait_status(lambda s: len(s["clients"]) == 1, "one client left")
    assert status["signals"]["dtr"] and status["signals"]["rts"]
    second.close()
    running.wait_status(lambda s: not s["signals"]["dtr"] and not s["signals"]["rts"], "DTR and RTS down")
