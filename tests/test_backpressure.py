"""Back-pressure end to end: vcom holds the faster side back instead of buffering.

The promise (README "Back-pressure"): when the remote cannot take data, vcom
stops reading the pty, so the program's ``write()`` blocks (EAGAIN on a
non-blocking fd) as on a slow UART; when the program does not read, vcom stops
reading the socket and TCP pushes back on the server.  Memory stays flat.

Each test moves far more data than any legitimate buffer can hold and checks
three things with real processes on 127.0.0.1:

* what is in flight (accepted by one end, not yet delivered at the other) is
  bounded by the buffers of the path, counted in bytes;
* the manager's resident memory (VmRSS of the pid in ``$VCOM_HOME/vcom.pid``,
  sampled before and during the transfer) grows by far less than the volume
  offered;
* once the slow side catches up, every byte arrives once and in order.

No assertion is about time: loops are bounded by deadlines only so that a
broken build fails instead of hanging.
"""

from __future__ import annotations

import hashlib
import os
import select
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bp_peers import PatternChecker, PatternSource, SlowSink, pattern
from peers import PtyDevice, Vcom, wait_until

from vcom.link import SOCKET_SEND_BUFFER

MiB = 1024 * 1024
KiB = 1024

OFFERED = 100 * MiB  # what the fast side tries to move
SLOW_RATE = 960  # bytes/s: a 9600 baud UART (10 bits per byte with start and stop bits)
PUSH_SECONDS = 3.0  # how long the program keeps trying to write into a slow remote
STALL_SECONDS = 3.0  # how long the program leaves a fast remote's data unread
RSS_EVERY = 0.2  # seconds between samples of the manager's memory

# What may legitimately sit between one end's write() and the other end's
# read() is mostly the kernel's.  Measured on Linux 6.x loopback (tcp_queues
# below reads the queues): a *sending* socket's queue auto-tunes up to
# tcp_wmem's maximum (4 MiB here: 2.9 MB seen in a fast source's socket towards
# vcom; 3.9 MB in vcom's own socket towards a slow remote until vcom fixed its
# send buffer at SOCKET_SEND_BUFFER, see towards_remote_bound), while the *receiving*
# socket's queue stays at tcp_rmem's default (128 KiB) because receive
# auto-tuning follows the reader's pace, a trickle or nothing here.  vcom's own
# part, which is what these tests are about:
#   the pty's queue ................................... ~16 KiB (twice with a pty UART at the far end)
#   asyncio's write buffer: the link's 64 KiB high-water mark + one 8 KiB pty read that crosses it
#   network to program: one socket read (vcom reads <= 64 KiB) waiting for the full pty
#   RFC 2217 share: the client's inbox (one socket read, <= 256 KiB) and the device's 16 KiB buffer
# That is under 0.5 MiB (seen: 85-140 KiB program to network, 125 KiB network
# to program); VCOM_HELD_BOUND allows it with margin, and is checked on its own
# by subtracting the kernel's queues.  The whole in-flight bound adds the
# kernel's limits read from /proc/sys: about 5.1 MiB here against 4.13 MB seen
# at most (a flat 4 MiB would be too tight).  An unbounded buffer in vcom lets
# the program write all 100 MiB within the push, 20 times the bound.
VCOM_HELD_BOUND = 512 * KiB


def towards_remote_bound() -> int:
    """Program to network: vcom fixes its socket's send buffer (the kernel doubles what is set), so
    only that, the remote's receive queue and vcom's own part may hold what the program wrote.
    Auto-tuning would allow tcp_wmem's maximum (4 MiB): seconds of a serial line's worth of data
    accepted from the program long before it can reach the UART."""
    rmem_default = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[1])
    return 2 * SOCKET_SEND_BUFFER + rmem_default + 2 * VCOM_HELD_BOUND


def in_flight_bound() -> int:
    """Kernel socket queues at their auto-tuning limits, plus 1 MiB for vcom's and the ptys' buffers."""
    wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    rmem_default = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[1])
    return wmem_max + rmem_default + 2 * VCOM_HELD_BOUND


# Resident memory the manager may gain while 100 MiB are offered: its buffers
# above are a few hundred KiB, plus allocator slack for 64-256 KiB read
# chunks coming and going (glibc keeps freed arenas), plus the status requests
# the test makes.  20 MiB is generous for that and a fifth of what keeping
# the offered data would cost.
RSS_GROWTH_BOUND = 20 * MiB


# ---------------------------------------------------------------------------
# Measuring the manager


@dataclass
class Rss:
    """VmRSS of the manager process, sampled; ``before`` is the baseline taken at creation."""

    pid: int
    before: int = 0
    peak: int = 0
    samples: int = 0

    @classmethod
    def of(cls, vcom: Vcom) -> Rss:
        pid = int((vcom.home / "vcom.pid").read_text().split()[0])
        rss = cls(pid)
        rss.before = rss.peak = rss.read()
        return rss

    def read(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KiB  # the kernel reports kB
        raise AssertionError(f"no VmRSS for pid {self.pid}: is the manager still alive?")

    def sample(self) -> None:
        self.peak = max(self.peak, self.read())
        self.samples += 1

    @property
    def growth(self) -> int:
        return self.peak - self.before

    def check(self) -> None:
        assert self.samples >= 5, f"only {self.samples} samples of the manager's memory"
        assert self.growth < RSS_GROWTH_BOUND, (
            f"manager memory grew by {self.growth / MiB:.1f} MiB "
            f"({self.before / MiB:.1f} -> {self.peak / MiB:.1f} MiB)")


def every(interval: float, action: Callable[[], None]) -> Callable[[], None]:
    """A callable that runs ``action`` when at least ``interval`` seconds have passed since it last did."""
    last = [float("-inf")]

    def tick() -> None:
        now = time.monotonic()
        if now - last[0] >= interval:
            last[0] = now
            action()

    return tick


# ---------------------------------------------------------------------------
# The program's side


@dataclass
class Writer:
    """A program writing :func:`pattern` into a non-blocking fd; counts what ``write()`` accepted and refused."""

    fd: int
    accepted: int = 0
    refused: int = 0  # write() calls that failed with EAGAIN: the program would have blocked
    digest: Any = field(default_factory=hashlib.sha256)

    def attempt(self, limit: int) -> None:
        """One write() of up to 64 KiB; on EAGAIN wait (bounded) until the fd is writable again."""
        chunk = pattern(self.accepted, min(64 * KiB, limit - self.accepted))
        try:
            taken = os.write(self.fd, chunk)
        except BlockingIOError:
            self.refused += 1
            select.select([], [self.fd], [], 0.05)
            return
        self.digest.update(chunk[:taken])
        self.accepted += taken


@dataclass
class PacedReader:
    """A far end that reads ``fd`` at ``rate`` bytes/s until :attr:`fast`; hashes what it got."""

    fd: int
    rate: int
    started: float = field(default_factory=time.monotonic)
    received: int = 0
    fast: bool = False
    digest: Any = field(default_factory=hashlib.sha256)

    def attempt(self) -> None:
        allowance = 1 * MiB if self.fast else int(self.rate * (time.monotonic() - self.started)) - self.received
        if allowance <= 0:
            return
        readable, _, _ = select.select([self.fd], [], [], 0.05 if self.fast else 0)
        if not readable:
            return
        try:
            data = os.read(self.fd, allowance)
        except BlockingIOError:
            return
        self.digest.update(data)
        self.received += len(data)


def connect(vcom: Vcom, port: Path, target: str, open_port: Callable[[Path], int]) -> int:
    """Create the port, open it as a program would, and wait until its link is up."""
    vcom.add(port, target)
    fd = open_port(port)
    vcom.wait_status(port, lambda s: s["state"] == "connected", what="link connected")
    return fd


# ---------------------------------------------------------------------------
# The kernel's share of what is in flight


_ESTABLISHED = "01"  # include/net/tcp_states.h


def tcp_queues(server_port: int) -> int:
    """Bytes the kernel holds in both sockets of the one connection to 127.0.0.1:server_port.

    /proc/net/tcp gives per socket ``tx_queue`` (written, not yet acknowledged
    by the peer) and ``rx_queue`` (arrived, not yet read by the application).
    Subtracting them from what is in flight leaves what vcom and the ptys hold.
    """
    sockets = 0
    held = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(address.rsplit(":", 1)[1], 16) for address in fields[1:3])
        if fields[3] == _ESTABLISHED and server_port in (local, remote):
            sockets += 1
            held += sum(int(queue, 16) for queue in fields[4].split(":"))
    assert sockets == 2, f"{sockets} established sockets on port {server_port}, expected one connection"
    return held


# ---------------------------------------------------------------------------
# Program -> network: a remote slower than the program


def push(writer: Writer, rss: Rss, also: Callable[[], None] = lambda: None) -> None:
    """The program writes as fast as the port lets it for PUSH_SECONDS (or until all is accepted)."""
    deadline = time.monotonic() + PUSH_SECONDS
    sample = every(RSS_EVERY, rss.sample)
    while time.monotonic() < deadline and writer.accepted < OFFERED:
        writer.attempt(OFFERED)
        also()
        sample()


def test_slow_raw_tcp_remote_blocks_the_writer_not_vcoms_memory(vcom: Vcom, open_port, start_peer, tmp_path):
    sink = start_peer(SlowSink(tmp_path / "sink", SLOW_RATE))
    port = tmp_path / "ttyV0"
    fd = connect(vcom, port, f"tcp://127.0.0.1:{sink.port}", open_port)
    wait_until(lambda: sink.status().get("connections") == 1, 10, "the sink to accept vcom")
    rss = Rss.of(vcom)
    writer = Writer(fd)

    push(writer, rss)
    # Read the remote's count and the kernel's queues back to back: at 960 bytes/s they barely move.
    received = sink.status()["received"]
    in_kernel = tcp_queues(sink.port)
    in_flight = writer.accepted - received
    held = in_flight - in_kernel

    assert writer.refused > 0, "write() never refused data although the remote reads 960 bytes/s"
    assert in_flight < towards_remote_bound(), (
        f"{writer.accepted} bytes accepted from the program, {received} received by the remote")
    assert held < VCOM_HELD_BOUND, f"vcom and the pty hold {held} bytes ({in_kernel} more in socket queues)"
    rss.check()

    # Let the remote catch up: every accepted byte arrives, once and in order.
    sink.speed_up()
    status = wait_until(lambda: (s := sink.status())["received"] >= writer.accepted and s, 30,
                        "the remote to receive every accepted byte")
    assert status["received"] == writer.accepted
    assert status["sha256"] == writer.digest.hexdigest()
    assert status["connections"] == 1
    assert vcom.status(port)["bytes_to_remote"] == writer.accepted
    print(f"raw tcp: accepted {writer.accepted}, received while slow {received}, in flight {in_flight} "
          f"(kernel {in_kernel}, vcom+pty {held}), EAGAIN {writer.refused}, "
          f"rss {rss.before} -> {rss.peak} ({rss.samples} samples)")


def test_slow_device_behind_rfc2217_share_blocks_the_writer(vcom: Vcom, device: PtyDevice, open_port, tmp_path):
    # vcom's own RFC 2217 server (same manager) shares a pty "UART" that the test drains at 9600 baud.
    listen = vcom.share(device.path)
    port = tmp_path / "ttyV0"
    fd = connect(vcom, port, f"rfc2217://127.0.0.1:{listen}", open_port)
    vcom.wait_status(port, lambda s: s["com_port"] is True, what="COM-PORT-OPTION agreed")
    rss = Rss.of(vcom)
    writer = Writer(fd)
    uart = PacedReader(device.master, SLOW_RATE)

    push(writer, rss, also=uart.attempt)
    in_kernel = tcp_queues(listen)
    in_flight = writer.accepted - uart.received
    # Socket queues hold telnet bytes (each 0xFF doubled, 1 byte in 256 of the pattern), so this
    # slightly underestimates what vcom holds; the bound has room for far more than that.
    held = in_flight - in_kernel

    assert writer.refused > 0, "write() never refused data although the UART drains 960 bytes/s"
    assert in_flight < towards_remote_bound(), (
        f"{writer.accepted} bytes accepted from the program, {uart.received} reached the UART")
    assert held < VCOM_HELD_BOUND, f"vcom and the ptys hold {held} bytes ({in_kernel} more in socket queues)"
    rss.check()

    uart.fast = True
    wait_until(lambda: uart.attempt() or uart.received >= writer.accepted, 30,
               "the UART to receive every accepted byte", interval=0)
    assert uart.received == writer.accepted
    assert uart.digest.hexdigest() == writer.digest.hexdigest()
    print(f"rfc2217: accepted {writer.accepted}, in flight {in_flight} (kernel {in_kernel}, vcom+ptys {held}), "
          f"EAGAIN {writer.refused}, rss {rss.before} -> {rss.peak} ({rss.samples} samples)")


# ---------------------------------------------------------------------------
# Network -> program: a program that stops reading


def test_stalled_reader_holds_a_fast_remote_back(vcom: Vcom, open_port, start_peer, tmp_path):
    source = start_peer(PatternSource(tmp_path / "source", OFFERED))
    port = tmp_path / "ttyV0"
    fd = connect(vcom, port, f"tcp://127.0.0.1:{source.port}", open_port)
    wait_until(lambda: source.status().get("connections") == 1, 10, "the source to accept vcom")
    rss = Rss.of(vcom)
    source.go()

    # The program reads nothing for a while: the source must be held back.
    deadline = time.monotonic() + STALL_SECONDS
    while time.monotonic() < deadline:
        rss.sample()
        time.sleep(RSS_EVERY)
    sent_while_stalled = source.status()["sent"]
    taken_by_vcom = vcom.status(port)["bytes_from_remote"]  # all of it still in vcom or the pty
    assert 0 < sent_while_stalled < in_flight_bound(), f"the source sent {sent_while_stalled} bytes to a stalled reader"
    assert taken_by_vcom < VCOM_HELD_BOUND, f"vcom took {taken_by_vcom} bytes for a program that reads nothing"

    # Now the program reads everything: byte-exact and in order.
    checker = PatternChecker()
    sample = every(RSS_EVERY, rss.sample)
    deadline = time.monotonic() + 60
    while checker.offset < OFFERED:
        assert time.monotonic() < deadline, f"read {checker.offset} of {OFFERED} bytes before the deadline"
        readable, _, _ = select.select([fd], [], [], 0.2)
        if readable:
            checker.take(os.read(fd, 1 * MiB))
        sample()
    rss.check()

    status = vcom.status(port)
    assert status["dropped_bytes"] == 0
    assert status["bytes_from_remote"] == OFFERED
    assert status["reconnects"] == 0
    assert source.status()["sent"] == OFFERED
    print(f"stalled reader: source sent {sent_while_stalled} while stalled, vcom took {taken_by_vcom}, "
          f"rss {rss.before} -> {rss.peak} ({rss.samples} samples)")
