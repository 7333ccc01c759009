"""Express: a hot port's bytes moved in C off the event loop (vcom.port.express, vcom/_relay.c).

The relay itself on a real vcom pty (packet mode, EXTPROC) and a socket pair: data both ways byte-exact,
IAC doubling and undoubling including pairs split across receives, and every reason it hands the port
back (a status byte, a telnet command, the wake descriptor, a quiet second, the slave's close, the peer's
EOF) with what it held.  Then through the manager: a streaming port goes express, data stays exact both
ways, and an unwrapped settings change in the middle of it reaches the server.  The whole suite also runs
with VCOM_EXPRESS_HOT=1 (.ci/run), where every eligible port goes express at its second chunk.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import select
import socket
import termios
import threading
import time
import tty
from pathlib import Path

import pytest
from peers import PtyDevice, Vcom, open_program, read_exact, wait_settings, wait_until, write_all

from vcom.port import express
from vcom.pty import VirtualPty

pytestmark = [pytest.mark.native,
              pytest.mark.skipif(not express.AVAILABLE, reason="vcom._relay was not built (no C compiler)")]
_relay = express._relay


class Bench:
    """A vcom pty (what the manager holds: the master in packet mode with EXTPROC), a program on its slave,
    a connected socket pair (the relay's end and the server's), and a relay run in a thread."""

    def __init__(self, tmp_path: Path) -> None:
        self.pty = VirtualPty(str(tmp_path / "ttyX"))
        self.pty.open(lock_extproc=False)
        self.program = os.open(self.pty.slave_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.program, termios.TCSANOW)
        self.pty.ensure_extproc()
        while self.pty.read() is not None:  # the status bytes of the set-up
            pass
        self.ours, self.server = socket.socketpair()
        self.ours.setblocking(False)
        self.wake = os.eventfd(0, os.EFD_NONBLOCK)
        self.counters = bytearray(16)
        self._thread: threading.Thread | None = None
        self._result: list[tuple] = []

    def start(self, iac: bool, idle_ms: int = 5000) -> None:
        self._result.clear()
        self._thread = threading.Thread(target=lambda: self._result.append(_relay.relay(
            self.pty.master_fd, self.ours.fileno(), self.wake, iac, idle_ms, self.counters)))
        self._thread.start()

    def result(self, timeout: float = 10) -> tuple:
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the relay did not return"
        return self._result[0]

    def stop(self) -> tuple:
        os.eventfd_write(self.wake, 1)
        result = self.result()
        os.eventfd_read(self.wake)
        return result

    def read_program(self, size: int, timeout: float = 10) -> bytes:
        return read_exact(self.program, size, timeout)

    def read_server(self, size: int, timeout: float = 10) -> bytes:
        self.server.settimeout(timeout)
        got = b""
        while len(got) < size:
            chunk = self.server.recv(size - len(got))
            assert chunk, f"the relay's end closed after {got!r}"
            got += chunk
        return got

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            os.eventfd_write(self.wake, 1)
            self._thread.join(10)
        for fd in (self.program, self.wake):
            try:
                os.close(fd)
            except OSError:
                pass
        self.ours.close()
        self.server.close()
        self.pty.close(remove_link=True)


@pytest.fixture
def bench(tmp_path: Path):
    made = Bench(tmp_path)
    yield made
    made.close()


def test_raw_data_both_ways_at_once_byte_exact(bench: Bench) -> None:
    up, down = random.Random(1).randbytes(1 << 20), random.Random(2).randbytes(1 << 20)
    bench.start(iac=False)
    writers = [threading.Thread(target=write_all, args=(bench.program, up, 30)),
               threading.Thread(target=bench.server.sendall, args=(down,))]
    for writer in writers:
        writer.start()
    got_down = bench.read_program(len(down), 30)
    got_up = bench.read_server(len(up), 30)
    for writer in writers:
        writer.join(30)
    assert hashlib.sha256(got_up).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(got_down).digest() == hashlib.sha256(down).digest()
    reason, unsent, undelivered, extra, _, carried = bench.stop()
    assert (reason, unsent, undelivered, extra, carried) == (_relay.WAKE, b"", b"", b"", b"")
    assert tuple(int.from_bytes(bench.counters[i:i + 8], "little") for i in (0, 8)) == (len(up), len(down))


def test_iac_doubled_out_and_undoubled_in_with_pairs_split_across_receives(bench: Bench) -> None:
    bench.start(iac=True)
    os.write(bench.program, b"a\xff\xff\xffb")
    assert bench.read_server(8) == b"a\xff\xff\xff\xff\xff\xffb"
    bench.server.sendall(b"x\xff")  # half a pair: the relay waits for the rest
    time.sleep(0.2)
    bench.server.sendall(b"\xffy\xff\xff\xff\xff")
    assert bench.read_program(5) == b"x\xffy\xff\xff"
    reason, unsent, undelivered, extra, _, carried = bench.stop()
    assert (reason, extra, carried) == (_relay.WAKE, b"", b"")


def test_a_telnet_command_hands_back_the_data_before_it_and_the_rest(bench: Bench) -> None:
    bench.start(iac=True)
    bench.server.sendall(b"data\xff\xffmore\xff\xfb\x2cafter")  # IAC WILL COM-PORT-OPTION
    reason, unsent, undelivered, extra, _, carried = bench.result()
    assert reason == _relay.COMMAND
    assert undelivered == b"data\xffmore"  # not yet written: the port delivers it before the command
    assert extra == b"\xff\xfb\x2cafter"
    assert carried == b""


def test_an_iac_that_ends_the_last_receive_is_handed_back_as_carried(bench: Bench) -> None:
    bench.start(iac=True)
    bench.server.sendall(b"one\xff")
    assert bench.read_program(3) == b"one"
    reason, _, undelivered, extra, _, carried = bench.stop()
    assert (reason, undelivered, extra, carried) == (_relay.WAKE, b"", b"", b"\xff")


def test_a_settings_change_returns_after_the_bytes_written_before_it(bench: Bench) -> None:
    bench.start(iac=False)
    os.write(bench.program, b"before")
    assert bench.read_server(6) == b"before"
    attrs = termios.tcgetattr(bench.program)
    attrs[4] = attrs[5] = termios.B19200
    termios.tcsetattr(bench.program, termios.TCSANOW, attrs)
    reason, unsent, _, extra, _, _ = bench.result()
    assert reason == _relay.STATUS and unsent == b""
    assert bench.pty.parse(extra).ioctl  # the port reads the new settings from here


def test_quiet_slave_close_and_peer_eof_each_hand_the_port_back(bench: Bench) -> None:
    bench.start(iac=False, idle_ms=200)
    assert bench.result()[0] == _relay.IDLE
    bench.server.shutdown(socket.SHUT_WR)
    bench.start(iac=False)
    assert bench.result()[0] == _relay.SOCKET
    os.close(bench.program)
    bench.program = -1
    bench.start(iac=False)
    assert bench.result()[0] == _relay.MASTER


def test_a_streaming_port_goes_express_and_stays_byte_exact(vcom: Vcom, device: PtyDevice, open_port,
                                                            tmp_path: Path) -> None:
    """Through the manager and vcom's own RFC 2217 share: a port streaming both ways goes express (status
    says so while it is), every byte arrives both ways, and an unwrapped speed change in the middle of the
    stream reaches the device.  (Every eligible wake-up may take it express: VCOM_EXPRESS_HOT=1, since on a
    loaded machine the stream may never be fast enough to count as hot.)"""
    vcom.env["VCOM_EXPRESS_HOT"] = "1"
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{vcom.share(device.path)}", "--connect", "always")
    vcom.wait_status(port, lambda s: s["state"] == "connected", what="connected")
    fd = open_port(port)
    up = bytes(range(256)) * 2048  # 512 KiB with every 0xFF doubled on the wire
    down = random.Random(3).randbytes(1 << 19)
    got_up = bytearray()

    def collect() -> None:  # the device reads all the time, so that nothing but vcom can hold data back
        while len(got_up) < len(up):
            got_up.extend(device.read_exact(min(4096, len(up) - len(got_up)), 60))

    collector = threading.Thread(target=collect)
    collector.start()
    write_all(fd, up[:len(up) // 2], 60)
    attrs = termios.tcgetattr(fd)
    attrs[4] = attrs[5] = termios.B57600
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    write_all(fd, up[len(up) // 2:], 60)
    wait_settings(device, ispeed=57600)
    collector.join(60)
    assert bytes(got_up) == up
    feeder = threading.Thread(target=device.write, args=(down, 60))
    feeder.start()
    assert read_exact(fd, len(down), 60) == down
    feeder.join(60)
    status = vcom.status(port)
    assert status["express_runs"] >= 1
    assert status["bytes_to_remote"] == len(up) and status["bytes_from_remote"] == len(down)
    # The stream may have ended on the loop: when the program reads slower than the device sends, a relay
    # hands back what the pty would not take, and a port with bytes held back for the pty is not lent again.
    # One more byte, with nothing held back, goes through a relay thread (VCOM_EXPRESS_HOT=1)...
    device.write(b"!", 10)
    assert read_exact(fd, 1, 10) == b"!"
    # ...which, quiet for a second, hands the port to the shared relay, which holds it for nothing.
    wait_until(lambda: vcom.query(port)["express_shared"], 10, "the quiet port with the shared relay")


def test_warm_ports_are_lent_to_the_shared_relay_and_stay_exact(vcom: Vcom, make_device, open_port,
                                                                tmp_path: Path) -> None:
    """Through the manager: ports that move a chunk now and then (never hot) are lent to the loop's shared
    relay (status says so), every byte arrives both ways, a speed change set in the middle of the stream
    reaches each device, a program's close hands its port back to the loop, and a quiet port stays lent
    (its next chunk moves at once in C)."""
    vcom.env["VCOM_EXPRESS_HOT"] = "1000000"
    vcom.env["VCOM_EXPRESS_WARM"] = "2"
    ports = [(tmp_path / f"ttyV{i}", make_device()) for i in range(3)]
    for port, device in ports:
        vcom.add(port, f"127.0.0.1:{vcom.share(device.path)}", "--connect", "always")
    for port, _ in ports:
        vcom.wait_status(port, lambda s: s["state"] == "connected", what="connected")
    fds = [open_program(ports[0][0])] + [open_port(port) for port, _ in ports[1:]]  # the first is closed below
    rng = random.Random(7)
    seen_shared = [False] * len(ports)
    rounds, size = 30, 300
    for round_ in range(rounds):
        for i, (fd, (port, device)) in enumerate(zip(fds, ports, strict=True)):
            up, down = rng.randbytes(size), rng.randbytes(size)
            os.write(fd, up)
            assert device.read_exact(size) == up  # first: the open's purge has reached the device before `down`
            device.write(down)
            assert read_exact(fd, size) == down
            if round_ >= 5:
                seen_shared[i] = seen_shared[i] or vcom.query(port)["express_shared"]
            if round_ == rounds // 2:
                attrs = termios.tcgetattr(fd)
                attrs[4] = attrs[5] = termios.B57600
                termios.tcsetattr(fd, termios.TCSANOW, attrs)
    assert all(seen_shared)
    for _, device in ports:
        wait_settings(device, ispeed=57600)
    os.close(fds[0])  # handed back by the slave's close
    wait_until(lambda: not vcom.query(ports[0][0])["express"], 10, "the closed port back on the loop")
    runs = {port: vcom.query(port)["express_runs"] for port, _ in ports[1:]}
    time.sleep(1.5)  # quiet: the others stay lent
    for fd, (port, device) in zip(fds[1:], ports[1:], strict=True):
        assert vcom.query(port)["express_shared"], port
        os.write(fd, b"after a pause")
        assert device.read_exact(13) == b"after a pause"
        device.write(b"answer")
        assert read_exact(fd, 6) == b"answer"
        assert vcom.query(port)["express_runs"] == runs[port]  # moved by the shared relay it never left
    for i, (port, _) in enumerate(ports):
        status = vcom.status(port)
        assert status["express_runs"] >= 1
        extra = (0, 0) if i == 0 else (13, 6)
        assert (status["bytes_to_remote"], status["bytes_from_remote"]) == (rounds * size + extra[0],
                                                                             rounds * size + extra[1])


def test_a_session_is_relayable_only_between_commands_in_binary_mode() -> None:
    """What the relay may take over: the codec's parser in plain data (not half-way through a command)
    and the peer sending BINARY (the relay does not undo CR NUL)."""
    from vcom.rfc2217 import BINARY, IAC, SB, SE, WILL, Connection, Role

    codec = Connection(Role.CLIENT)
    codec.initiate()
    assert not codec.plain_data_follows  # the peer has not said WILL BINARY
    codec.receive_data(bytes((IAC, WILL, BINARY)))
    assert codec.plain_data_follows
    codec.receive_data(b"data" + bytes((IAC, SB, 44, 101, 0, 0)))  # an answer cut off after its first bytes
    assert not codec.plain_data_follows
    codec.receive_data(bytes((0x4B, 0x00, IAC, SE)))
    assert codec.plain_data_follows
    codec.receive_data(bytes((IAC,)))  # half a pair, or a command's start
    assert not codec.plain_data_follows


# -- the shared relay (vcom._relay.Mux): many warm ports moved in C from the loop's thread


class Pump:
    """A Mux driven as the event loop drives it (wait for its descriptor, run), by a thread, keeping
    what it hands back."""

    def __init__(self) -> None:
        self.mux = _relay.Mux()
        self.back: list[tuple[int, tuple]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            readable, _, _ = select.select([self.mux.fileno()], [], [], 0.05)
            if readable:
                self.back.extend(self.mux.run())

    def lend(self, bench: Bench, iac: bool, hot_events: int = 0, hot_window_ms: int = 50) -> None:
        self.mux.add(bench.pty.master_fd, bench.ours.fileno(), iac, hot_events, hot_window_ms)

    def handed_back(self, bench: Bench, timeout: float = 10) -> tuple:
        """The outcome the Mux handed back for ``bench``'s port (waits for it)."""
        wait_until(lambda: any(key == bench.pty.master_fd for key, _ in self.back), timeout, "a hand-back")
        index = next(i for i, (key, _) in enumerate(self.back) if key == bench.pty.master_fd)
        return self.back.pop(index)[1]

    def close(self) -> None:
        self._stop = True
        self._thread.join(10)


@pytest.fixture
def pump():
    made = Pump()
    yield made
    made.close()


def _stream(bench: Bench, rounds: int, size: int, seed: int, iac: bool = False) -> tuple[bytes, bytes]:
    """Chunks both ways, each read at the other end before the next (within what a pty holds); with
    ``iac`` the server's side is telnet data (0xFF doubled)."""
    rng = random.Random(seed)
    up, down = rng.randbytes(rounds * size), rng.randbytes(rounds * size)

    def wire(data: bytes) -> bytes:
        return data.replace(b"\xff", b"\xff\xff") if iac else data

    for i in range(0, len(up), size):
        os.write(bench.program, up[i:i + size])
        bench.server.sendall(wire(down[i:i + size]))
        assert bench.read_server(len(wire(up[i:i + size]))) == wire(up[i:i + size])
        assert bench.read_program(size) == down[i:i + size]
    return up, down


def test_the_shared_relay_moves_both_ways_byte_exact_and_counts(bench: Bench, pump: Pump) -> None:
    pump.lend(bench, iac=False)
    up, down = _stream(bench, 200, 1000, 4)
    assert pump.back == []  # nothing needed Python
    assert pump.mux.counts(bench.pty.master_fd) == (len(up), len(down))
    reason, unsent, undelivered, extra, _, carried, sent, received = pump.mux.remove(bench.pty.master_fd)
    assert (reason, unsent, undelivered, extra, carried) == (_relay.WAKE, b"", b"", b"", b"")
    assert (sent, received) == (len(up), len(down))
    assert pump.mux.remove(bench.pty.master_fd) is None and len(pump.mux) == 0


def test_the_shared_relay_doubles_and_undoubles_iac_and_hands_back_a_carried_one(bench: Bench, pump: Pump) -> None:
    pump.lend(bench, iac=True)
    os.write(bench.program, b"a\xff\xff\xffb")
    assert bench.read_server(8) == b"a\xff\xff\xff\xff\xff\xffb"
    bench.server.sendall(b"x\xff")  # half a pair: carried to the next receive
    time.sleep(0.2)
    bench.server.sendall(b"\xffy\xff\xff\xff\xff")
    assert bench.read_program(5) == b"x\xffy\xff\xff"
    bench.server.sendall(b"one\xff")
    assert bench.read_program(3) == b"one"
    outcome = pump.mux.remove(bench.pty.master_fd)
    assert (outcome[0], outcome[5], outcome[7]) == (_relay.WAKE, b"\xff", 5 + 3)


def test_the_shared_relay_hands_back_a_command_and_a_status_byte(bench: Bench, pump: Pump) -> None:
    pump.lend(bench, iac=True)
    bench.server.sendall(b"data\xff\xffmore\xff\xfb\x2cafter")  # IAC WILL COM-PORT-OPTION
    reason, _, undelivered, extra, *_ = pump.handed_back(bench)
    assert (reason, undelivered, extra) == (_relay.COMMAND, b"data\xffmore", b"\xff\xfb\x2cafter")
    pump.lend(bench, iac=False)
    os.write(bench.program, b"before")
    assert bench.read_server(6) == b"before"
    attrs = termios.tcgetattr(bench.program)
    attrs[4] = attrs[5] = termios.B19200
    termios.tcsetattr(bench.program, termios.TCSANOW, attrs)
    reason, unsent, _, extra, *_ = pump.handed_back(bench)
    assert reason == _relay.STATUS and unsent == b""
    assert bench.pty.parse(extra).ioctl


def test_a_pty_that_takes_part_hands_back_the_rest_undelivered(bench: Bench, pump: Pump) -> None:
    """The program reads nothing: the Mux writes what the pty takes and hands back the rest, in order,
    without keeping a byte of it; what it did not receive stays in the socket."""
    down = random.Random(5).randbytes(1 << 18)
    pump.lend(bench, iac=False)
    feeder = threading.Thread(target=bench.server.sendall, args=(down,))
    feeder.start()
    reason, _, undelivered, *_ = pump.handed_back(bench)
    assert reason == _relay.BUSY and undelivered
    written = bytearray()
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(bench.program, 65536):
            written += chunk
    rest = bytearray()
    bench.ours.settimeout(10)
    while len(written) + len(undelivered) + len(rest) < len(down):
        rest += bench.ours.recv(65536)  # the loop's part, once the port is back on it
    feeder.join(10)
    assert bytes(written + undelivered + rest) == down


def test_a_socket_that_takes_part_hands_back_the_rest_unsent(bench: Bench, pump: Pump) -> None:
    bench.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    bench.server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    up = random.Random(6).randbytes(1 << 18)
    pump.lend(bench, iac=False)
    offered = 0
    while not pump.back and offered < len(up):  # the server reads nothing
        with contextlib.suppress(BlockingIOError):
            offered += os.write(bench.program, up[offered:offered + 1000])
        time.sleep(0.001)
    reason, unsent, *_ = pump.handed_back(bench)
    assert reason == _relay.BUSY and unsent
    bench.server.setblocking(False)
    sent = bytearray()
    with contextlib.suppress(BlockingIOError):
        while chunk := bench.server.recv(65536):
            sent += chunk
    assert bytes(sent + unsent) == up[:len(sent) + len(unsent)]


def test_a_port_grown_hot_is_handed_back_and_a_quiet_one_stays_lent(bench: Bench, pump: Pump) -> None:
    """Hot: handed back for a relay thread.  Quiet: kept (it costs nothing), and sending() names it once
    after it sent data, so that its link watches for the server's acknowledgement; receiving is not
    sending."""
    pump.lend(bench, iac=False, hot_events=3, hot_window_ms=60_000)
    for i in range(3):
        os.write(bench.program, b"%d" % i)
        assert bench.read_server(1) == b"%d" % i
    assert pump.handed_back(bench)[0] == _relay.HOT
    pump.lend(bench, iac=False)
    assert pump.mux.sending() == []
    os.write(bench.program, b"up")
    assert bench.read_server(2) == b"up"
    assert pump.mux.sending() == [bench.pty.master_fd]
    assert pump.mux.sending() == []  # once per batch of sends
    bench.server.sendall(b"down")
    assert bench.read_program(4) == b"down"
    assert pump.mux.sending() == []
    time.sleep(0.3)  # quiet
    assert len(pump.mux) == 1 and pump.back == []
    os.write(bench.program, b"again")  # moved at once, by the Mux
    assert bench.read_server(5) == b"again"
    assert pump.mux.counts(bench.pty.master_fd) == (7, 4)


def test_the_shared_relay_hands_back_on_peer_eof_and_slave_close(bench: Bench, pump: Pump) -> None:
    pump.lend(bench, iac=False)
    bench.server.shutdown(socket.SHUT_WR)
    assert pump.handed_back(bench)[0] == _relay.SOCKET
    os.close(bench.program)
    bench.program = -1
    pump.lend(bench, iac=False)
    assert pump.handed_back(bench)[0] == _relay.MASTER


def test_many_ports_share_one_relay_each_byte_exact(tmp_path: Path, pump: Pump) -> None:
    benches = [Bench(tmp_path / str(i)) for i in range(16) if not (tmp_path / str(i)).mkdir()]
    try:
        for bench in benches:
            pump.lend(bench, iac=True)
        assert len(pump.mux) == len(benches)
        for round_ in range(10):
            for i, bench in enumerate(benches):
                _stream(bench, 1, 700, 1000 * round_ + i, iac=True)
        assert pump.back == []
        for bench in benches:
            assert pump.mux.counts(bench.pty.master_fd) == (7000, 7000)
            assert pump.mux.remove(bench.pty.master_fd)[0] == _relay.WAKE
    finally:
        for bench in benches:
            bench.close()


def test_the_shared_relay_refuses_what_it_cannot_hold(bench: Bench, pump: Pump) -> None:
    pump.lend(bench, iac=False)
    with pytest.raises(ValueError, match="lent already"):
        pump.lend(bench, iac=False)
    with pytest.raises(ValueError, match="still lent"):
        pump.mux.close()
    assert pump.mux.counts(bench.program) is None and pump.mux.remove(bench.program) is None
    with pytest.raises(OSError):
        pump.mux.add(bench.wake + 1000, bench.ours.fileno(), False, 0, 50)  # not a descriptor
    assert len(pump.mux) == 1
    pump.mux.remove(bench.pty.master_fd)
