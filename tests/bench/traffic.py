"""The program's side of a port: what a serial program does, timed.

Each function drives ports through their paths exactly as a program would (open, raw mode,
write, read) and checks every byte that comes back against what was sent, so that a relay
that loses or corrupts data fails the run instead of looking fast.
"""

from __future__ import annotations

import os
import queue
import select
import termios
import time
import tty
from pathlib import Path

_CHUNK = 65536


class BenchError(RuntimeError):
    pass


def open_port(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd)
    return fd


def drain(fd: int, quiet: float = 0.05) -> None:
    """Read and drop whatever arrives until the port stays quiet for ``quiet`` seconds."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while poller.poll(quiet * 1000):
        try:
            if not os.read(fd, _CHUNK):
                return
        except BlockingIOError:
            pass


def round_trips(fd: int, count: int, timeout: float = 5.0) -> list[int]:
    """Nanoseconds from writing one byte to reading it back, ``count`` times."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    samples = []
    for i in range(count):
        byte = bytes((0x41 + i % 26,))
        started = time.perf_counter_ns()
        os.write(fd, byte)
        got = b""
        while not got:
            if not poller.poll(timeout * 1000):
                raise BenchError(f"no echo within {timeout:g} s")
            try:
                got = os.read(fd, 16)
            except BlockingIOError:
                continue
        samples.append(time.perf_counter_ns() - started)
        if got != byte:
            raise BenchError(f"sent {byte!r}, got back {got!r}")
    return samples


def echo_throughput(fd: int, pattern: bytes, seconds: float, timeout: float = 30.0) -> tuple[int, float]:
    """Write ``pattern`` over and over for ``seconds`` while reading the echo; then wait for the rest.

    Returns (bytes echoed, seconds from the first write to the last byte back).  Every byte is
    checked against what was written.
    """
    size = len(pattern)
    twice = memoryview(pattern * 2)
    sent = received = 0
    poller = select.poll()
    started = time.perf_counter()
    stop_writing = started + seconds
    last = started
    writing = True
    poller.register(fd, select.POLLIN | select.POLLOUT)
    while writing or received < sent:
        now = time.perf_counter()
        if writing and now >= stop_writing:
            writing = False
            poller.modify(fd, select.POLLIN)
        if now - last > timeout:
            raise BenchError(f"{sent - received} bytes did not come back within {timeout:g} s")
        for _, events in poller.poll(100):
            if events & select.POLLIN:
                try:
                    chunk = os.read(fd, _CHUNK)
                except BlockingIOError:
                    chunk = b""
                if chunk:
                    at = received % size
                    if twice[at:at + len(chunk)] != chunk:
                        raise BenchError(f"echoed data differs from what was sent near byte {received}")
                    received += len(chunk)
                    last = time.perf_counter()
            if writing and events & select.POLLOUT:
                at = sent % size
                try:
                    sent += os.write(fd, twice[at:at + _CHUNK])
                except BlockingIOError:
                    pass
            if events & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                raise BenchError("the port was hung up")
    return received, last - started


class Streams:
    """Many ports each fed at a fixed rate (bytes/s) and read back, in one epoll loop."""

    def __init__(self, fds: list[int], rate: float, pattern: bytes, tick: float = 0.1) -> None:
        self.fds = fds
        self.per_tick = max(1, round(rate * tick))
        self.tick = tick
        self.pattern = memoryview(pattern * 2)
        self.size = len(pattern)
        self.sent = [0] * len(fds)
        self.received = [0] * len(fds)
        self.short_writes = 0  # a pty was full: the relay did not keep up
        self._index = {fd: i for i, fd in enumerate(fds)}
        self._epoll = select.epoll(len(fds))
        for fd in fds:
            self._epoll.register(fd, select.EPOLLIN)

    def run(self, seconds: float) -> None:
        next_tick = time.monotonic()
        end = next_tick + seconds
        while True:
            now = time.monotonic()
            if now >= next_tick:
                if now >= end:
                    return
                self._feed()
                next_tick += self.tick
            self._read(max(0.0, next_tick - time.monotonic()))

    def finish(self, timeout: float = 30.0) -> None:
        """Read until every byte sent came back, or the timeout."""
        deadline = time.monotonic() + timeout
        while sum(self.received) < sum(self.sent) and time.monotonic() < deadline:
            self._read(0.2)

    def close(self) -> None:
        self._epoll.close()

    def _feed(self) -> None:
        for i, fd in enumerate(self.fds):
            at = self.sent[i] % self.size
            try:
                n = os.write(fd, self.pattern[at:at + self.per_tick])
            except BlockingIOError:
                n = 0
            if n < self.per_tick:
                self.short_writes += 1
            self.sent[i] += n

    def _read(self, timeout: float) -> None:
        for fd, _ in self._epoll.poll(timeout):
            i = self._index[fd]
            try:
                chunk = os.read(fd, _CHUNK)
            except BlockingIOError:
                continue
            at = self.received[i] % self.size
            if self.pattern[at:at + len(chunk)] != chunk:
                raise BenchError(f"port {i}: echoed data differs from what was sent near byte {self.received[i]}")
            self.received[i] += len(chunk)


def settings_latency(fd: int, bauds, reports, count: int, timeout: float = 5.0) -> list[int]:
    """Nanoseconds from the program's tcsetattr (new speed) to SET-BAUDRATE arriving at the server.

    ``reports`` is the echo server's queue of (baud, CLOCK_MONOTONIC ns); both clocks are the same one.
    """
    attrs = termios.tcgetattr(fd)
    samples = []
    for i in range(count):
        baud = bauds[i % len(bauds)]
        speed = getattr(termios, f"B{baud}")
        attrs[4] = attrs[5] = speed
        while not reports.empty():
            reports.get_nowait()
        started = time.monotonic_ns()
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"SET-BAUDRATE {baud} did not reach the server within {timeout:g} s")
            try:
                got, at = reports.get(timeout=remaining)
            except queue.Empty:
                continue
            if got == baud:
                samples.append(at - started)
                break
    return samples
