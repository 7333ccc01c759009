"""Far ends for the back-pressure tests: a slow raw TCP sink, a fast pattern source, and the pattern.

- :class:`SlowSink` accepts vcom's raw TCP connection and reads it at about
  9600 baud (960 bytes/s), as a device server in front of a slow UART drains
  its socket.  On SIGUSR1 it reads at full speed, so a test can let
  everything in flight arrive without waiting minutes.  It records how many
  bytes it received and their SHA-256.
- :class:`PatternSource` accepts one connection and, on SIGUSR1, pushes a
  fixed number of bytes of :func:`pattern` as fast as the socket takes them,
  recording how many the kernel accepted.  The pattern is computed, not held,
  so 100 MiB cost no memory on either side.
- :class:`PatternChecker` compares a received stream with :func:`pattern`
  chunk by chunk and fails at the first wrong byte.

Both servers are processes (this file run as a script), so they run while the
test blocks in its own I/O, with no threads.  They report through a small JSON
status file, replaced atomically, that the test reads whenever it wants.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import random
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peers import PYTHON, PeerProcess

# A prime block length, so block boundaries never line up with the 4/16/64 KiB
# chunks of the layers in between: a lost or repeated chunk always shows.
BLOCK = 65521
_BASE = random.Random(2217).randbytes(BLOCK)


@functools.lru_cache(maxsize=4)
def _block(index: int) -> bytes:
    # The block number leads each block, so reordered or repeated blocks differ too.
    return index.to_bytes(8, "big") + _BASE[8:]


def pattern(offset: int, size: int) -> bytes:
    """Bytes ``offset`` to ``offset + size`` of an endless deterministic stream."""
    out = bytearray()
    while size > 0:
        index, within = divmod(offset, BLOCK)
        take = min(size, BLOCK - within)
        out += _block(index)[within : within + take]
        offset += take
        size -= take
    return bytes(out)


@dataclass
class PatternChecker:
    """What arrived so far of :func:`pattern`; ``take`` fails at the first byte that differs."""

    offset: int = 0

    def take(self, chunk: bytes) -> None:
        expected = pattern(self.offset, len(chunk))
        if chunk != expected:
            at = next(i for i, (a, b) in enumerate(zip(chunk, expected, strict=False)) if a != b)
            raise AssertionError(
                f"stream differs at byte {self.offset + at}: expected {expected[at : at + 16].hex(' ')}, "
                f"got {chunk[at : at + 16].hex(' ')}"
            )
        self.offset += len(chunk)


# ---------------------------------------------------------------------------
# The servers as seen from a test


class _StatusServer(PeerProcess):
    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.status_path = workdir / f"{self.name}.json"
        self.status_path.unlink(missing_ok=True)

    def status(self) -> dict[str, Any]:
        try:
            return json.loads(self.status_path.read_text())
        except FileNotFoundError:
            return {}

    def signal_go(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, f"{self.name} is not running"
        self.proc.send_signal(signal.SIGUSR1)


class SlowSink(_StatusServer):
    """Reads its connections at ``rate`` bytes/s until :meth:`speed_up`; status: received, sha256, connections."""

    name = "slow-sink"

    def __init__(self, workdir: Path, rate: int) -> None:
        super().__init__(workdir)
        self.rate = rate

    def command(self) -> list[str]:
        return [PYTHON, str(Path(__file__).resolve()), "sink", str(self.port), str(self.status_path), str(self.rate)]

    def speed_up(self) -> None:
        self.signal_go()


class PatternSource(_StatusServer):
    """Sends ``total`` bytes of :func:`pattern` after :meth:`go` (at most ``rate`` bytes/s, 0: as fast as the
    socket takes them); status: sent, connections."""

    name = "pattern-source"

    def __init__(self, workdir: Path, total: int, rate: int = 0) -> None:
        super().__init__(workdir)
        self.total = total
        self.rate = rate

    def command(self) -> list[str]:
        return [PYTHON, str(Path(__file__).resolve()), "source", str(self.port), str(self.status_path),
                str(self.total), "--rate", str(self.rate)]

    def go(self) -> None:
        self.signal_go()


# ---------------------------------------------------------------------------
# The servers themselves


class _Flag:
    """Set by SIGUSR1; the select loops below wake at least every 50 ms to look at it."""

    def __init__(self) -> None:
        self.set = False
        signal.signal(signal.SIGUSR1, self._handler)

    def _handler(self, *_: object) -> None:
        self.set = True


def _write_status(path: str, status: dict[str, Any]) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "w") as out:
        json.dump(status, out)
    os.replace(temporary, path)


def _listen(port: int) -> socket.socket:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(8)
    return server


def run_sink(port: int, status_path: str, rate: int) -> None:
    """Read at ``rate`` bytes/s (a token bucket refilled by elapsed time) until SIGUSR1, then at full speed.

    Later connections are counted and kept open but not read: a test expects exactly one.
    """
    fast = _Flag()
    server = _listen(port)
    conns: list[socket.socket] = []
    received = 0
    digest = hashlib.sha256()
    started: float | None = None

    def report() -> None:
        _write_status(status_path, {"received": received, "sha256": digest.hexdigest(), "connections": len(conns),
                                    "fast": fast.set})

    report()
    while True:
        readable, _, _ = select.select([server, *conns[:1]], [], [], 0.05)
        if server in readable:
            conns.append(server.accept()[0])
            started = started or time.monotonic()
            report()
        if not conns or conns[0] not in readable:
            continue
        assert started is not None
        allowance = 1 << 20 if fast.set else int(rate * (time.monotonic() - started)) - received
        if allowance <= 0:
            time.sleep(0.02)
            continue
        data = conns[0].recv(min(allowance, 1 << 20))
        if not data:
            return  # vcom closed: nothing more will come
        received += len(data)
        digest.update(data)
        report()


def run_source(port: int, status_path: str, total: int, rate: int = 0) -> None:
    """Accept one connection, wait for SIGUSR1, then send ``total`` bytes of the pattern (``rate``: bytes/s cap).

    The connection stays open until the client closes it, as a device server's does: an end of
    stream would make vcom reconnect, which the test counts.
    """
    go = _Flag()
    server = _listen(port)
    conns: list[socket.socket] = []
    sent = 0
    started: float | None = None
    reported: tuple[int, int, bool] | None = None
    while True:
        if (sent, len(conns), go.set) != reported:
            reported = (sent, len(conns), go.set)
            _write_status(status_path, {"sent": sent, "connections": len(conns), "started": go.set})
        writers = conns[:1] if go.set and sent < total else []
        readable, writable, _ = select.select([server, *conns[:1]], writers, [], 0.05)
        if server in readable:
            conns.append(server.accept()[0])
            conns[-1].setblocking(False)
        if conns and conns[0] in readable:
            with contextlib.suppress(BlockingIOError):
                if not conns[0].recv(4096):
                    return  # vcom closed
        if conns and conns[0] in writable:
            started = started or time.monotonic()
            allowance = int(rate * (time.monotonic() - started)) - sent if rate else 1 << 18
            if allowance <= 0:
                time.sleep(0.005)
                continue
            with contextlib.suppress(BlockingIOError):
                sent += conns[0].send(pattern(sent, min(allowance, 1 << 18, total - sent)))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="back-pressure test peers")
    parser.add_argument("role", choices=("sink", "source"))
    parser.add_argument("port", type=int)
    parser.add_argument("status")
    parser.add_argument("amount", type=int, help="sink: bytes per second; source: bytes to send")
    parser.add_argument("--rate", type=int, default=0, help="source: bytes per second at most (0: no limit)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.role == "sink":
        run_sink(args.port, args.status, args.amount)
    else:
        run_source(args.port, args.status, args.amount, args.rate)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(sys.argv[1:])
