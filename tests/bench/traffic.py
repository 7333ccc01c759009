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
from collections.abc import Callable
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


SET_BAUDRATE, SET_CONTROL = 1, 5  # RFC 2217 section 3 command codes, as the server sees them
SET_CONTROL_VALUE = {("d", 1): 8, ("d", 0): 9, ("r", 1): 11, ("r", 0): 12}  # DTR/RTS on/off


def call_latency(call: Callable[[int], int], expected: Callable[[int], tuple[int, int]], reports: queue.Queue,
                 count: int, timeout: float = 5.0) -> list[int]:
    """Nanoseconds from a program's call to the command it causes arriving at the server.

    ``call(i)`` makes the i-th call and returns the CLOCK_MONOTONIC ns at which it began;
    ``expected(i)`` is the (code, value) the server must then receive.  ``reports`` is the
    echo server's queue of (code, value, ns); both clocks are the same one.  One call at a
    time: the next begins only once the server has seen this one.
    """
    samples = []
    for i in range(count):
        want = expected(i)
        while not reports.empty():
            reports.get_nowait()
        started = call(i)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"COM-PORT-OPTION {want} did not reach the server within {timeout:g} s")
            try:
                code, value, at = reports.get(timeout=remaining)
            except queue.Empty:
                continue
            if (code, value) == want:
                samples.append(at - started)
                break
    return samples


def settings_latency(fd: int, bauds: tuple[int, ...], reports: queue.Queue, count: int) -> list[int]:
    """tcsetattr with a new speed, made here on ``fd`` (a program that is not wrapped)."""
    attrs = termios.tcgetattr(fd)

    def call(i: int) -> int:
        attrs[4] = attrs[5] = getattr(termios, f"B{bauds[i % len(bauds)]}")
        started = time.monotonic_ns()
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        return started

    return call_latency(call, lambda i: (SET_BAUDRATE, bauds[i % len(bauds)]), reports, count)


class LineCalls:
    """tests/bench/linecalls.c running on a port (under ``vcom wrap``): one call per request."""

    def __init__(self, proc) -> None:
        self.proc = proc

    def __call__(self, command: str) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{command}\n".encode())
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().split()
        if len(answer) != 2:
            raise BenchError(f"linecalls stopped at {command!r} (exit {self.proc.poll()})")
        if answer[1] != b"0":
            raise BenchError(f"linecalls: {command!r} failed: {os.strerror(int(answer[1]))}")
        return int(answer[0])


def wrapped_latency(calls: LineCalls, kind: str, reports: queue.Queue, count: int) -> list[int]:
    """Speed changes (``kind`` "b") or DTR toggles ("d") made by a wrapped program."""
    if kind == "b":
        bauds = (19200, 9600)
        return call_latency(lambda i: calls(f"b {bauds[i % 2]}"), lambda i: (SET_BAUDRATE, bauds[i % 2]),
                            reports, count)
    # off first: the line came up with the open, as a UART's does
    return call_latency(lambda i: calls(f"{kind} {i % 2}"),
                        lambda i: (SET_CONTROL, SET_CONTROL_VALUE[(kind, i % 2)]), reports, count)
