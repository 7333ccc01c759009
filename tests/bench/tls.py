"""What TLS costs a vcom port: round-trip latency and throughput over TLS, each beside the same figure over
plain TCP measured in the same run (``python tests/bench/tls.py``; ``measure(workdir)`` gives the rows).

Two echo servers on 127.0.0.1, both socat (``PIPE``): one plain TCP, one TLS with a certificate made
here (trustme).  One private vcom manager with two ports, ``tcp://`` and ``tcp+tls://``, connected
before timing starts.  A program's side is a raw open of each port.

* Round trip: 16 bytes written to the port, the same 16 read back; the median of ``ROUNDS`` trips,
  plain and TLS alternating in blocks of 50 so that both see the same load on the machine.
* Throughput: ``VOLUME`` bytes written while the echo is read back at the same time; bytes per second
  of the whole echo, the median of ``RUNS`` runs each way, alternating.

Both servers and both ports run through the same code; the difference is TLS at both ends (vcom's
client and socat's server).  Every wait is bounded; everything is stopped and removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tty
from pathlib import Path
from typing import Any

ROUNDS = 1000
BLOCK = 50
PAYLOAD = b"0123456789abcdef"
VOLUME = 4 * 1024 * 1024
RUNS = 3
TIMEOUT = 60.0


def measure(workdir: Path) -> list[dict[str, Any]]:
    """Rows of figures: ``value`` over TLS, ``baseline`` over plain TCP, same run."""
    import trustme

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    ca_file = workdir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = ca.issue_cert("127.0.0.1")
    cert, key = workdir / "server.crt", workdir / "server.key"
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    home = Path(tempfile.mkdtemp(prefix="vcom-tls-", dir="/tmp"))  # short: the control socket's path
    env = {**os.environ, "VCOM_HOME": str(home)}
    plain_port, tls_port = _free_port(), _free_port()
    echoes = [
        subprocess.Popen(["socat", f"TCP-LISTEN:{plain_port},bind=127.0.0.1,reuseaddr,fork", "PIPE"],
                         stderr=subprocess.DEVNULL),
        subprocess.Popen(["socat", f"OPENSSL-LISTEN:{tls_port},bind=127.0.0.1,reuseaddr,fork,cert={cert},key={key},"
                                   "verify=0", "PIPE"], stderr=subprocess.DEVNULL),
    ]
    fds: list[int] = []
    try:
        _wait(lambda: _listening(plain_port) and _listening(tls_port), "the echo servers")
        plain_tty, tls_tty = home / "plain", home / "tls"
        _vcom(env, "add", str(plain_tty), f"tcp://127.0.0.1:{plain_port}", "--connect", "always")
        _vcom(env, "add", str(tls_tty), f"tcp+tls://127.0.0.1:{tls_port}", "--tls-ca", str(ca_file), "--connect",
              "always")
        plain, secure = _open(plain_tty), _open(tls_tty)
        fds += [plain, secure]
        for fd in (plain, secure):
            _round_trip(fd)  # connected, and the first trip's set-up out of the way
        trips: dict[int, list[float]] = {plain: [], secure: []}
        for _ in range(ROUNDS // BLOCK):
            for fd in (plain, secure):
                trips[fd] += [_round_trip(fd) for _ in range(BLOCK)]
        rates: dict[int, list[float]] = {plain: [], secure: []}
        for _ in range(RUNS):
            for fd, path in ((plain, plain_tty), (secure, tls_tty)):
                try:
                    rates[fd].append(_throughput(fd))
                except RuntimeError as exc:
                    raise RuntimeError(f"{path.name}: {exc}; {_counters(env, path)}") from None
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        subprocess.run([sys.executable, "-m", "vcom", "shutdown"], env=env, capture_output=True, timeout=60)
        for echo in echoes:
            echo.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                echo.wait(timeout=10)
        shutil.rmtree(home, ignore_errors=True)
    ms, mib = 1000.0, 1024 * 1024
    return [
        {"figure": f"round trip through a vcom port, {len(PAYLOAD)} bytes, median of {ROUNDS}: TLS vs plain TCP",
         "value": statistics.median(trips[secure]) * ms, "baseline": statistics.median(trips[plain]) * ms,
         "unit": "ms", "goal": "TLS adds at most 50% to the plain round trip"},
        {"figure": f"echo throughput through a vcom port, {VOLUME // mib} MiB, median of {RUNS}: TLS vs plain TCP",
         "value": statistics.median(rates[secure]) / mib, "baseline": statistics.median(rates[plain]) / mib,
         "unit": "MiB/s", "goal": "TLS keeps at least 70% of plain TCP's throughput"},
    ]


def _round_trip(fd: int) -> float:
    start = time.perf_counter()
    _write_all(fd, PAYLOAD)
    got = b""
    while len(got) < len(PAYLOAD):
        got += _read(fd, len(PAYLOAD) - len(got))
    elapsed = time.perf_counter() - start
    if got != PAYLOAD:
        raise RuntimeError(f"echo came back changed: {got!r}")
    return elapsed


def _throughput(fd: int) -> float:
    block = bytes(range(256)) * 64  # 16 KiB
    sent = received = 0
    start = time.perf_counter()
    deadline = time.monotonic() + TIMEOUT
    while received < VOLUME:
        if time.monotonic() > deadline:
            raise RuntimeError(f"echo stalled at {received} of {VOLUME} bytes")
        writers = [fd] if sent < VOLUME else []
        readable, writable, _ = select.select([fd], writers, [], 1.0)
        if readable:
            received += len(os.read(fd, 65536))
        if writable:
            with contextlib.suppress(BlockingIOError):
                sent += os.write(fd, block[:min(len(block), VOLUME - sent)])
    return VOLUME / (time.perf_counter() - start)


def _open(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd)
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    deadline = time.monotonic() + TIMEOUT
    while view:
        if time.monotonic() > deadline:
            raise RuntimeError("the port takes no data")
        select.select([], [fd], [], 1.0)
        with contextlib.suppress(BlockingIOError):
            view = view[os.write(fd, view):]


def _read(fd: int, count: int) -> bytes:
    readable, _, _ = select.select([fd], [], [], TIMEOUT)
    if not readable:
        raise RuntimeError("no echo within the time allowed")
    with contextlib.suppress(BlockingIOError):
        return os.read(fd, count)
    return b""


def _vcom(env: dict[str, str], *args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "vcom", *args], env=env, capture_output=True, text=True,
                            timeout=60)
    if result.returncode:
        raise RuntimeError(f"vcom {' '.join(args)}: {result.stderr.strip()}")


def _counters(env: dict[str, str], path: Path) -> str:
    """What the port counted, for a run that went wrong."""
    import json

    result = subprocess.run([sys.executable, "-m", "vcom", "status", str(path), "--json"], env=env,
                            capture_output=True, text=True, timeout=60)
    try:
        status = json.loads(result.stdout)
    except ValueError:
        return result.stderr.strip()
    keys = ("state", "open", "bytes_to_remote", "bytes_from_remote", "dropped_bytes", "lost_bytes", "last_error")
    return ", ".join(f"{key} {status.get(key)}" for key in keys)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + 15
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="vcom-tls-bench-") as where:
        for row in measure(Path(where)):
            ratio = row["value"] / row["baseline"] if row["baseline"] else float("nan")
            print(f"{row['figure']}: {row['value']:.3f} {row['unit']} over TLS, {row['baseline']:.3f} {row['unit']} "
                  f"plain (x{ratio:.2f}); goal: {row['goal']}")
