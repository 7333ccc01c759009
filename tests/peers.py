"""Real peers for the end-to-end tests: devices, servers, a wire recorder and a CLI driver.

Everything here is the world *around* vcom, built from real kernel objects and
real third-party programs on 127.0.0.1:

- :class:`PtyDevice` is the far-end "UART".  A server (ser2net, pyserial's
  RFC 2217 server) is given the pty *slave* path as its serial device; the test
  holds the master, so ``read`` on the master is what the UART transmitted to
  the line and ``write`` is what arrives from the line.  The master sees the
  slave's termios (Linux redirects mode ioctls), so the test can check the
  exact speed, stop bits and flow control a server applied.
- :class:`Ser2net` and :class:`PyserialServer` are real RFC 2217 servers.
- :class:`WireProxy` sits between vcom and a server and records both
  directions, so a test can check what went over the wire where the pty far
  end cannot show it (ordering of data and SET-BAUDRATE, for instance).
- :class:`HostileServer` misbehaves: closes at once, sends garbage, or never
  says anything.
- :class:`Vcom` drives the ``vcom`` CLI with its own ``VCOM_HOME`` and makes
  sure no manager process outlives the test.

Servers that must run while a test blocks on its own I/O are separate
processes (no threads): ser2net itself, ``pyserial_server.py``, and this very
file run as a script for the proxy and the hostile servers (see :func:`main`).
Every wait is bounded by a deadline; nothing here sleeps for a fixed time to
"let things settle".
"""

from __future__ import annotations

import argparse
import array
import contextlib
import fcntl
import itertools
import json
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import textwrap
import time
import tty
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from vcom import control as vcom_control

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable

# ---------------------------------------------------------------------------
# Waiting


def wait_until(predicate: Callable[[], T], timeout: float, what: str = "condition", interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds.

    Returns the truthy value, so callers can wait for *and* fetch a result.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------
# Loopback TCP


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now.

    Racy (another process may take it before the caller binds it): servers
    here bind port 0 and report the port they got (:func:`bound_addresses`),
    and a target that must refuse is :func:`refusing_port`.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shared_port(result: subprocess.CompletedProcess[str]) -> int:
    """The port a ``vcom share ... --listen HOST:0`` bound: "DEVICE shared as PROTOCOL[ over TLS] on HOST:PORT"."""
    return int(result.stdout.strip().rsplit(":", 1)[1])


def notify_socket(where: Path) -> socket.socket:
    """A datagram socket at ``where``/notify standing in for systemd's NOTIFY_SOCKET (20 s receive timeout)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(where / "notify"))
    sock.settimeout(20)
    return sock


@contextlib.contextmanager
def refusing_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A port that refuses every connection while the ``with`` block runs.

    The socket is bound but never listens: the kernel answers a SYN with a
    reset, and as long as it is held no other process can take the port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        yield sock.getsockname()[1]


_TCP_LISTEN = "0A"  # include/net/tcp_states.h: TCP_LISTEN = 10
_UDP_UNCONNECTED = "07"  # TCP_CLOSE: how /proc/net/udp shows a bound, unconnected socket


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def _proc_address(text: str) -> tuple[str, int]:
    """``0100007F:1F90`` (little-endian words, as /proc/net shows them) as ("127.0.0.1", 8080)."""
    hex_host, hex_port = text.split(":")
    raw = bytes.fromhex(hex_host)
    # The kernel prints each 32-bit word in host byte order.
    host_bytes = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(host_bytes) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, host_bytes), int(hex_port, 16)


def bound_addresses(pid: int, kind: str = "tcp") -> list[tuple[str, int]]:
    """The (host, port) of every listening TCP socket (``kind="udp"``: bound UDP socket) that ``pid`` holds.

    Read from /proc, in the order of the sockets' creation as far as the fd
    numbers tell it.  A peer binds port 0 and the test learns the port here,
    without connecting (a probe connection would start a session on ser2net
    or pyserial's server) and without a window in which another process
    could take a port picked in advance.
    """
    inodes = _socket_inodes(pid)
    state = _TCP_LISTEN if kind == "tcp" else _UDP_UNCONNECTED
    found: list[tuple[str, int]] = []
    # The tables of the process's own network namespace (a peer may run in one a test made).
    for table in (f"/proc/{pid}/net/{kind}", f"/proc/{pid}/net/{kind}6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[3] == state and fields[9] in inodes:
                    found.append(_proc_address(fields[1]))
    return found


# ---------------------------------------------------------------------------
# ttys

# struct termios2 (asm-generic/termbits.h): four tcflag_t, c_line, c_cc[19],
# then c_ispeed and c_ospeed.  TCGETS2 = _IOR('T', 0x2A, struct termios2).
_TCGETS2 = 0x802C542A
_TERMIOS2_WORDS = 11  # 44 bytes
_CBAUD = 0o010017
_BOTHER = 0o010000
_CRTSCTS = 0o20000000000


@dataclass(frozen=True, slots=True)
class TtySettings:
    """What a tty is configured to, as far as a pty keeps it.

    The pty driver keeps speed, CSTOPB, CRTSCTS and IXON/IXOFF as set, but
    forces CS8 and clears PARENB, so data bits and parity are not shown here.
    """

    baud: int  # c_ospeed: exact, also for BOTHER rates like 250000
    ispeed: int
    bother: bool  # set with TCSETS2 and an arbitrary rate rather than a Bxxx code
    cstopb: bool
    crtscts: bool
    ixon: bool
    ixoff: bool


def tty_settings(fd: int) -> TtySettings:
    """Read the exact settings with TCGETS2 (``tcgetattr`` only gives the Bxxx code)."""
    buf = array.array("I", [0] * _TERMIOS2_WORDS)
    fcntl.ioctl(fd, _TCGETS2, buf)
    iflag, cflag = buf[0], buf[2]
    return TtySettings(
        baud=buf[10],
        ispeed=buf[9],
        bother=(cflag & _CBAUD) == _BOTHER,
        cstopb=bool(cflag & termios.CSTOPB),
        crtscts=bool(cflag & _CRTSCTS),
        ixon=bool(iflag & termios.IXON),
        ixoff=bool(iflag & termios.IXOFF),
    )


def reset_tty(fd: int, speed: int = termios.B9600) -> None:
    """Put a tty back to ``speed`` 8N1, no flow control, raw."""
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[0] &= ~(termios.IXON | termios.IXOFF | termios.IXANY)
    attrs[2] &= ~(termios.CSTOPB | _CRTSCTS)
    attrs[2] |= termios.CLOCAL | termios.CREAD
    attrs[4] = attrs[5] = speed
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def open_program(path: str | os.PathLike[str]) -> int:
    """Open a serial port as a program would (raw mode), non-blocking for bounded I/O."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd)
    return fd


def stty(path: str | os.PathLike[str], *args: str) -> None:
    """Run the real ``stty -F PATH ARGS``."""
    subprocess.run(["stty", "-F", str(path), *args], check=True, timeout=10, capture_output=True)


class PtyDevice:
    """The far-end UART: a pty whose slave a server opens as its serial device.

    The slave stays open for the device's whole life so that the master never
    reads EIO between server sessions (and so the slave's termios persists).
    """

    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self._slave)

    def fileno(self) -> int:
        return self.master

    def settings(self) -> TtySettings:
        return tty_settings(self.master)

    def reset(self, speed: int = termios.B9600) -> None:
        """Forget whatever a server configured (used to prove settings are re-applied)."""
        reset_tty(self.master, speed)

    def write(self, data: bytes, timeout: float = 10.0) -> None:
        write_all(self.master, data, timeout)

    def read_exact(self, n: int, timeout: float = 10.0) -> bytes:
        return read_exact(self.master, n, timeout)

    def read_until(self, marker: bytes, timeout: float = 10.0) -> bytes:
        return read_until(self.master, marker, timeout)

    def drain(self) -> bytes:
        return drain(self.master)

    def describe(self) -> str:
        """What the device's server has not taken yet: bytes the device wrote that are still unread on the
        server's side (the slave's input), and bytes the server wrote that the device has not read."""
        def queued(fd: int) -> int:
            return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, bytes(4)))[0]

        try:
            return (f"device {self.path}: {queued(self._slave)} bytes written by the device unread by its server, "
                    f"{queued(self.master)} bytes from the server unread by the device")
        except OSError as exc:
            return f"device {self.path}: {exc}"

    def unplug(self) -> None:
        """Close the master: to whoever has the slave open, the device is gone (hang-up, then EIO)."""
        os.close(self.master)
        self.master = -1

    def close(self) -> None:
        for fd in (self.master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.master = self._slave = -1


# ---------------------------------------------------------------------------
# Bounded non-blocking I/O

_CHUNK = 65536


def _read_some(fd: int) -> bytes:
    """One non-blocking read; b"" if nothing is there.  EOF/EIO raise: a test must see them."""
    try:
        data = os.read(fd, _CHUNK)
    except BlockingIOError:
        return b""
    if not data:
        raise EOFError(f"fd {fd} reached end of file")
    return data


def write_all(fd: int, data: bytes, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    view = memoryview(data)
    while view:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"write of {len(data)} bytes to fd {fd} stuck with {len(view)} left")
        _, writable, _ = select.select([], [fd], [], min(remaining, 0.2))
        if writable:
            with contextlib.suppress(BlockingIOError):
                view = view[os.write(fd, view[:_CHUNK]) :]


def read_exact(fd: int, n: int, timeout: float = 10.0) -> bytes:
    deadline = time.monotonic() + timeout
    got = bytearray()
    while len(got) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"read {len(got)} of {n} bytes from fd {fd} before the deadline: {bytes(got[:64])!r}")
        readable, _, _ = select.select([fd], [], [], min(remaining, 0.2))
        if readable:
            got += _read_some(fd)
    return bytes(got)


def read_until(fd: int, marker: bytes, timeout: float = 10.0) -> bytes:
    """Read until ``marker`` has been seen; returns everything read (may extend past it)."""
    deadline = time.monotonic() + timeout
    got = bytearray()
    while marker not in got:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{marker!r} not seen on fd {fd}; got {len(got)} bytes, tail {bytes(got[-64:])!r}")
        readable, _, _ = select.select([fd], [], [], min(remaining, 0.2))
        if readable:
            got += _read_some(fd)
    return bytes(got)


def drain(fd: int) -> bytes:
    """Everything readable right now (bounded: stops at the first empty read)."""
    got = bytearray()
    for _ in range(1024):
        chunk = _read_some(fd)
        if not chunk:
            break
        got += chunk
    return bytes(got)


@dataclass
class Stream:
    """One direction of a transfer: ``payload`` is written into ``source`` and must come out of ``sink``."""

    source: int
    sink: int
    payload: bytes
    received: bytearray = field(default_factory=bytearray)
    sent: int = 0

    @property
    def done(self) -> bool:
        return len(self.received) >= len(self.payload)


def _receive(stream: Stream, chunk: bytes) -> None:
    """Take bytes from the sink, failing at the first byte that differs from the payload.

    Failing at once (instead of waiting for bytes that will never come) makes
    a corrupting link fail fast and shows where and how it corrupted.
    """
    start = len(stream.received)
    stream.received += chunk
    expected = stream.payload[start : start + len(chunk)]
    if chunk != expected:
        at = start + next(
            (i for i, (a, b) in enumerate(zip(chunk, expected, strict=False)) if a != b), min(len(chunk), len(expected))
        )
        raise AssertionError(
            f"stream corrupted at byte {at}: expected {stream.payload[max(0, at - 8) : at + 8].hex(' ')}, "
            f"got {bytes(stream.received[max(0, at - 8) : at + 8]).hex(' ')}"
        )


def pump(streams: Sequence[Stream], timeout: float) -> None:
    """Run all streams concurrently in one select loop until every payload has arrived.

    Both directions must move at once: a serial link has small buffers at each
    hop, so writing one side to completion before reading the other would
    deadlock on back-pressure.
    """
    for stream in streams:
        os.set_blocking(stream.source, False)
        os.set_blocking(stream.sink, False)
    by_sink = {stream.sink: stream for stream in streams}
    deadline = time.monotonic() + timeout
    while not all(stream.done for stream in streams):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            progress = ", ".join(f"{s.sent}/{len(s.payload)} sent {len(s.received)} received" for s in streams)
            raise AssertionError(f"transfer not finished within {timeout:g}s: {progress}")
        readers = [s.sink for s in streams if not s.done]
        writers = list({s.source for s in streams if s.sent < len(s.payload)})
        readable, writable, _ = select.select(readers, writers, [], min(remaining, 0.2))
        for fd in readable:
            _receive(by_sink[fd], _read_some(fd))
        for stream in streams:
            if stream.source in writable and stream.sent < len(stream.payload):
                with contextlib.suppress(BlockingIOError):
                    stream.sent += os.write(stream.source, stream.payload[stream.sent : stream.sent + 4096])


# How long the handshake waits for the device's answer before the device sends it again.
HANDSHAKE_RESEND = 5.0


def handshake(program_fd: int, device: PtyDevice, timeout: float = 15.0) -> None:
    """Prove the whole path works both ways before a test relies on it.

    A server typically opens its device only once a client connects, and may
    flush it on open, so bytes the device sends earlier can be lost through no
    fault of the client.  A unique marker each way tells the test that the
    client, the server and the device are all in session.

    The device's answer is sent again every HANDSHAKE_RESEND seconds until it
    arrives (a warning says so): ser2net has been seen, about once in two
    thousand sessions under load, not to pass on the device's first bytes of
    a session while vcom had received nothing from it at all.  A path that
    stays broken still fails here; tests assert on their own data afterwards.
    """
    token = os.urandom(8).hex().encode()
    write_all(program_fd, b"<up:" + token + b">", timeout)
    device.read_until(b"<up:" + token + b">", timeout)
    down = b"<down:" + token + b">"
    deadline = time.monotonic() + timeout
    for attempt in itertools.count():
        device.write(down, timeout)
        wait = min(HANDSHAKE_RESEND, deadline - time.monotonic())
        try:
            read_until(program_fd, down, max(wait, 0.1))
        except AssertionError:
            if time.monotonic() + 0.1 >= deadline:
                raise AssertionError(f"{down!r} not seen on fd {program_fd} within {timeout:g} s, sent "
                                     f"{attempt + 1} times; {device.describe()}") from None
            continue
        if attempt:
            warnings.warn(f"handshake: the device's answer arrived only when sent again ({attempt + 1} times)",
                          stacklevel=2)
            time.sleep(0.5)
            drain(program_fd)  # an earlier copy that was only late must not reach the test's own reads
        return


def wait_settings(device: PtyDevice, timeout: float = 15.0, **expected: object) -> TtySettings:
    """Wait until the device's tty shows every ``expected`` field (see :class:`TtySettings`)."""
    last: list[TtySettings] = []

    def matches() -> TtySettings | None:
        last[:] = [device.settings()]
        return last[0] if all(getattr(last[0], key) == value for key, value in expected.items()) else None

    try:
        return wait_until(matches, timeout, f"device settings {expected}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; device shows {last[0] if last else None}") from None


def poke(fd: int) -> bytes:
    """Use a program's fd once: a small write (EAGAIN allowed: the buffer may be full) and a drain.

    Any other error, EIO in particular, propagates: a port must never fail the
    program because of what happens on the network.
    """
    with contextlib.suppress(BlockingIOError):
        os.write(fd, b"ping")
    return drain(fd)


# ---------------------------------------------------------------------------
# Peer processes


class PeerProcess:
    """A server process started and stopped by a test, its output kept in a log file.

    A server binds port 0 the first time and :meth:`bound` learns the port it
    got from /proc; ``start()`` after ``kill()`` passes that same port again,
    as a respawned device server comes back where it was.
    """

    name = "peer"
    listeners = 1  # listening sockets the server opens
    kind = "tcp"  # or "udp": a bound datagram socket counts as listening

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0  # 0 until the first start: the kernel picks it

    def command(self) -> list[str]:
        raise NotImplementedError

    def ports(self) -> list[int]:
        return [self.port]

    def bound(self, addresses: list[tuple[str, int]]) -> None:
        """Learn the port(s) the server got; ``addresses`` are its listening sockets."""
        self.port = addresses[0][1]

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already running"
        with open(self.log_path, "ab") as log:
            # A session of its own: the server and what it spawns (sredird under socat) stop together.
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        if self.listeners:
            self.bound(wait_until(self._ready, timeout, f"{self.name} listening"))

    def _ready(self) -> list[tuple[str, int]] | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
        addresses = bound_addresses(self.proc.pid, self.kind)
        return addresses if len(addresses) >= self.listeners else None

    def kill(self) -> None:
        """SIGKILL: the abrupt death of a server (no goodbye on the wire)."""
        self._signal_and_reap(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM to its process group, then SIGKILL if it does not go within a few seconds."""
        if self.proc is None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._signal_and_reap(signal.SIGKILL)

    def _signal_and_reap(self, sig: int) -> None:
        if self.proc is None:
            return
        self._signal_group(sig)
        self.proc.wait(timeout=10)

    def _signal_group(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)  # also after the leader exited: its children may remain

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


class Ser2net(PeerProcess):
    """ser2net 4 serving ``device`` over RFC 2217 (``.port``) and raw TCP (``.raw_port``).

    The raw accepter may serve another device so that one server can back two
    vcom ports at once.  ``kill()`` then ``start()`` restarts it on the SAME
    ports, as a crashed and respawned device server would.  The raw accepter
    listens on another loopback address (``.raw_host``), so that the two
    ports, both bound as port 0, are told apart by address.
    """

    name = "ser2net"
    listeners = 2
    host = "127.0.0.1"
    raw_host = "127.0.0.2"

    def __init__(self, workdir: Path, device: str, raw_device: str | None = None) -> None:
        super().__init__(workdir)
        self.device = device
        self.raw_device = raw_device or device
        self.raw_port = 0
        self.config_path = workdir / "ser2net.yaml"
        self.pid_path = workdir / "ser2net.pid"
        self.config_path.write_text(self._config())

    @property
    def target(self) -> str:
        """The RFC 2217 accepter as a vcom target."""
        return f"{self.host}:{self.port}"

    @property
    def raw_target(self) -> str:
        """The raw TCP accepter as a vcom target."""
        return f"tcp://{self.raw_host}:{self.raw_port}"

    def _config(self) -> str:
        # kickolduser: a reconnecting client replaces a session ser2net still
        # believes alive.  "local" = CLOCAL: no modem lines on a pty.
        connections = [
            ("rfc2217", f"telnet(rfc2217),tcp,{self.host},{self.port}", self.device),
            ("raw", f"tcp,{self.raw_host},{self.raw_port}", self.raw_device),
        ]
        parts = ["%YAML 1.1", "---"]
        for name, accepter, device in connections:
            parts += [
                f"connection: &{name}",
                f"    accepter: {accepter}",
                "    options:",
                "      kickolduser: true",
                f"    connector: serialdev,{device},115200n81,local",
                "",
            ]
        return "\n".join(parts)

    def command(self) -> list[str]:
        return ["ser2net", "-n", "-d", "-u", "-P", str(self.pid_path), "-c", str(self.config_path)]

    def bound(self, addresses: list[tuple[str, int]]) -> None:
        ports = dict(addresses)
        self.port = ports[self.host]
        self.raw_port = ports.get(self.raw_host, self.raw_port)
        self.config_path.write_text(self._config())  # a restart comes back on the same ports

    def ports(self) -> list[int]:
        return [self.port, self.raw_port]


class PyserialServer(PeerProcess):
    """pyserial's RFC 2217 PortManager on ``device`` (tests/pyserial_server.py), on 127.0.0.1."""

    name = "pyserial-server"

    def __init__(self, workdir: Path, device: str) -> None:
        super().__init__(workdir)
        self.device = device

    def command(self) -> list[str]:
        return [PYTHON, str(HERE / "pyserial_server.py"), "--port", str(self.port), "-v", self.device]


class Socat(PeerProcess):
    """``socat ADDRESS1 ADDRESS2``; ``{port}`` in an address is the port to listen on (0 at the first start).

    ``kind="udp"`` when the listener is a UDP socket; ``listeners=0`` for a socat that only connects out.
    """

    name = "socat"

    def __init__(self, workdir: Path, *addresses: str, kind: str = "tcp", listeners: int = 1) -> None:
        super().__init__(workdir)
        self.addresses = addresses
        self.kind = kind
        self.listeners = listeners

    def command(self) -> list[str]:
        return ["socat", "-d", "-d", *(address.replace("{port}", str(self.port)) for address in self.addresses)]


class WireProxy(PeerProcess):
    """A recording TCP proxy: vcom connects to ``.port``, the proxy to ``target_port``.

    Every chunk is appended to a JSON-lines record as it passes, so the test can
    read what crossed the wire at any moment while the proxy keeps running.
    """

    name = "wire-proxy"

    def __init__(self, workdir: Path, target_port: int) -> None:
        super().__init__(workdir)
        self.target_port = target_port
        self.record_path = workdir / "wire.jsonl"
        self.record_path.unlink(missing_ok=True)

    def command(self) -> list[str]:
        return [
            PYTHON,
            str(Path(__file__).resolve()),
            "proxy",
            str(self.port),
            str(self.target_port),
            str(self.record_path),
        ]

    def records(self) -> list[dict[str, Any]]:
        try:
            text = self.record_path.read_text()
        except FileNotFoundError:
            return []
        # The last line may be half written while the proxy runs.
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

    def connections(self) -> int:
        return sum(1 for record in self.records() if record["event"] == "open")

    def stream(self, direction: str, conn: int | None = None) -> bytes:
        """All bytes of one direction ("c2s" client to server, "s2c"), optionally of one connection."""
        return b"".join(
            bytes.fromhex(r["hex"])
            for r in self.records()
            if r["event"] == "data" and r["dir"] == direction and (conn is None or r["conn"] == conn)
        )

    def client_items(self, conn: int | None = None) -> list[Item]:
        return decode_telnet(self.stream("c2s", conn))

    def server_items(self, conn: int | None = None) -> list[Item]:
        return decode_telnet(self.stream("s2c", conn))


class HostileServer(PeerProcess):
    """A server that misbehaves; counts connections and keeps what it got (except in the flooding modes).

    close: accepts and hangs up at once; garbage: random bytes and broken telnet now and then, never
    negotiates; silent: never sends a byte.  The flooding ones (:data:`FLOODS`): random: random bytes as
    fast as vcom takes them; flood: DO/DONT, WILL/WONT and SIGNATURE requests without pause, never reading
    vcom's answers; subneg: one subnegotiation that never ends; slowloris: one byte of an unfinished
    negotiation every half second, never reading; disconnect: reads slowly for a random while, then resets
    the connection (as a crashing server does), again and again.
    """

    name = "hostile"
    MODES = ("close", "garbage", "silent")
    FLOODS = ("random", "flood", "subneg", "slowloris", "disconnect")

    def __init__(self, workdir: Path, mode: str) -> None:
        assert mode in self.MODES + self.FLOODS, mode
        self.name = f"hostile-{mode}"
        super().__init__(workdir)
        self.mode = mode
        self.accept_log = workdir / f"hostile-{mode}.accepts"
        self.received_path = workdir / f"hostile-{mode}.received"

    def command(self) -> list[str]:
        return [
            PYTHON,
            str(Path(__file__).resolve()),
            "hostile",
            self.mode,
            str(self.port),
            str(self.accept_log),
            str(self.received_path),
        ]

    def connections(self) -> int:
        try:
            return len(self.accept_log.read_text().splitlines())
        except FileNotFoundError:
            return 0

    def accept_times(self) -> list[float]:
        """When each connection was accepted (time.monotonic(), the same clock in every process)."""
        try:
            return [float(line.split()[1]) for line in self.accept_log.read_text().splitlines()]
        except FileNotFoundError:
            return []

    def received(self) -> bytes:
        """Every byte the server read, from all connections in turn."""
        try:
            return self.received_path.read_bytes()
        except FileNotFoundError:
            return b""


# ---------------------------------------------------------------------------
# Telnet / RFC 2217 decoding (independent of vcom's own codec on purpose: the
# recorder must not share the bugs of what it checks)

IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
COM_PORT_OPTION = 44
# RFC 2217 client command codes (server answers are these + 100).
SIGNATURE, SET_BAUDRATE, SET_DATASIZE, SET_PARITY, SET_STOPSIZE, SET_CONTROL = 0, 1, 2, 3, 4, 5
PURGE_DATA = 12


@dataclass(frozen=True, slots=True)
class Data:
    data: bytes


@dataclass(frozen=True, slots=True)
class Negotiation:
    verb: int  # WILL, WONT, DO, DONT
    option: int


@dataclass(frozen=True, slots=True)
class Subnegotiation:
    option: int
    command: int  # first byte after the option; -1 when empty
    value: bytes

    @property
    def number(self) -> int:
        """The value as a network-order integer (baud rates are 4 bytes)."""
        return int.from_bytes(self.value[:4], "big") if self.value else 0


@dataclass(frozen=True, slots=True)
class Command:
    code: int  # any other telnet command (NOP, BRK, ...)


Item = Data | Negotiation | Subnegotiation | Command


def decode_telnet(stream: bytes) -> list[Item]:
    """Split a telnet byte stream into data runs, negotiations and subnegotiations, in order.

    Doubled IAC is one 0xFF, in data and inside SB values alike (RFC 854, RFC
    2217).  An unfinished sequence at the end (the stream was cut) is dropped.
    """
    items: list[Item] = []
    data = bytearray()
    i, n = 0, len(stream)

    def flush() -> None:
        if data:
            items.append(Data(bytes(data)))
            data.clear()

    while i < n:
        byte = stream[i]
        if byte != IAC:
            data.append(byte)
            i += 1
            continue
        if i + 1 >= n:
            break
        verb = stream[i + 1]
        if verb == IAC:
            data.append(IAC)
            i += 2
        elif verb in (WILL, WONT, DO, DONT):
            if i + 2 >= n:
                break
            flush()
            items.append(Negotiation(verb, stream[i + 2]))
            i += 3
        elif verb == SB:
            end, body = _subnegotiation_body(stream, i + 2)
            if end < 0:
                break
            flush()
            items.append(Subnegotiation(body[0] if body else -1, body[1] if len(body) > 1 else -1, bytes(body[2:])))
            i = end
        else:
            flush()
            items.append(Command(verb))
            i += 2
    flush()
    return items


def _subnegotiation_body(stream: bytes, start: int) -> tuple[int, bytearray]:
    """Unescaped body of ``IAC SB ... IAC SE`` and the index after it; -1 if unterminated."""
    body = bytearray()
    i = start
    while i + 1 < len(stream):
        if stream[i] == IAC and stream[i + 1] == SE:
            return i + 2, body
        if stream[i] == IAC and stream[i + 1] == IAC:
            body.append(IAC)
            i += 2
        else:
            body.append(stream[i])
            i += 1
    return -1, body


def com_port_commands(items: Iterable[Item], command: int | None = None) -> list[Subnegotiation]:
    """The RFC 2217 subnegotiations among ``items``, optionally only one command code."""
    return [
        item
        for item in items
        if isinstance(item, Subnegotiation)
        and item.option == COM_PORT_OPTION
        and (command is None or item.command == command)
    ]


def data_and_commands(items: Iterable[Item], *commands: int) -> list[bytes | Subnegotiation]:
    """In wire order: the data among ``items`` (bytes) and their RFC 2217 subnegotiations of ``commands``."""
    return [
        item.data if isinstance(item, Data) else item
        for item in items
        if isinstance(item, Data)
        or isinstance(item, Subnegotiation) and item.option == COM_PORT_OPTION and item.command in commands
    ]


# ---------------------------------------------------------------------------
# The vcom CLI


class Vcom:
    """Drives ``python -m vcom`` with a private VCOM_HOME; ``close()`` leaves no process behind."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "VCOM_HOME": str(home)}

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        command = [PYTHON, "-m", "vcom", *args]
        try:
            return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            # A background manager that inherits the CLI's stdout/stderr keeps
            # the pipes open, so the command never appears to finish.
            raise AssertionError(
                f"`vcom {' '.join(args)}` did not finish within {timeout:g}s "
                f"(stdout {exc.stdout!r}, stderr {exc.stderr!r})"
            ) from None

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = self.cli(*args)
        assert result.returncode == 0, f"`vcom {' '.join(args)}` failed ({result.returncode}): {result.stderr}"
        return result

    def add(self, device: str | os.PathLike[str], target: str, *options: str) -> subprocess.CompletedProcess[str]:
        result = self.ok("add", str(device), target, *options)
        assert os.path.islink(device), f"`vcom add` returned 0 but {device} is not a symlink"
        return result

    def share(self, device: str | os.PathLike[str], *options: str, host: str = "127.0.0.1") -> int:
        """``vcom share DEVICE --listen HOST:0 OPTIONS``: the port the share bound."""
        listen = f"[{host}]:0" if ":" in host else f"{host}:0"
        return shared_port(self.ok("share", str(device), "--listen", listen, *options))

    def start_manager(self, *options: str, env: dict[str, str] | None = None, stderr: int | None = None,
                      wait: bool = True, prefix: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        """``vcom run OPTIONS`` in the foreground, as systemd starts it (``close()`` stops it with the rest).

        Its output goes to ``foreground.log`` in the home unless ``stderr`` says otherwise (PIPE); with
        ``wait`` this returns once it answers on the control socket.  ``prefix``: a command that execs the
        rest (setpriv with the unit's capabilities, say).
        """
        with open(self.home / "foreground.log", "ab") as log:
            proc = subprocess.Popen([*prefix, PYTHON, "-m", "vcom", "run", *options], env={**self.env, **(env or {})},
                                    stdin=subprocess.DEVNULL, stdout=log if stderr is None else subprocess.DEVNULL,
                                    stderr=log if stderr is None else stderr)
        if wait:
            def answering() -> bool:
                assert proc.poll() is None, f"the manager exited with {proc.returncode}: {self.log_tail()}"
                return self.answering()

            self.wait_for(answering, 15, "the manager answering")
        return proc

    def wrap(self, script: str, timeout: float = 60) -> Any:
        """``vcom wrap python -c SCRIPT``: the JSON the script prints last."""
        result = subprocess.run([PYTHON, "-m", "vcom", "wrap", PYTHON, "-c", textwrap.dedent(script)], env=self.env,
                                capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])

    def status(self, device: str | os.PathLike[str] | None = None) -> Any:
        args = ["status", str(device), "--json"] if device is not None else ["status", "--json"]
        return json.loads(self.ok(*args).stdout)

    def answering(self) -> bool:
        """Whether a manager answers on this home's control socket."""
        try:
            self.query()
        except (OSError, ValueError, AssertionError):
            return False
        return True

    def query(self, device: str | os.PathLike[str] | None = None) -> Any:
        """What ``vcom status [DEVICE] --json`` prints, asked directly on the control socket.

        The same request the CLI sends (one JSON line each way); cheap enough to poll.
        """
        request: dict[str, Any] = {"cmd": "status"}
        if device is not None:
            name = str(device)
            request["device"] = name if name.lower().startswith("sim:") else os.path.abspath(name)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(self.home / "vcom.sock"))
            sock.sendall(json.dumps(request).encode() + b"\n")
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = sock.recv(65536)
                assert chunk, f"the manager closed the connection after {answer!r}"
                answer += chunk
        reply = json.loads(answer)
        assert reply.get("ok"), f"status {device}: {reply.get('error')}"
        if device is not None:
            return reply.get("port") or reply.get("share")
        return {"ports": reply["ports"], "shares": reply["shares"]}

    def ports(self) -> list[dict[str, Any]]:
        """Status of every port: ``vcom status --json`` without a device.

        That is a list of port objects, or an object whose ``ports`` holds
        that list (when the manager also reports other kinds of entries).
        """
        listing = self.status()
        return listing["ports"] if isinstance(listing, dict) else listing

    def wait_for(self, predicate: Callable[[], T], timeout: float = 15.0, what: str = "condition") -> T:
        return wait_until(predicate, timeout, what, interval=0.1)

    def wait_status(
        self,
        device: str | os.PathLike[str],
        predicate: Callable[[dict[str, Any]], object],
        timeout: float = 15.0,
        what: str = "status",
    ) -> dict[str, Any]:
        """Poll the status of DEVICE until ``predicate(status)`` holds; return that status.

        Polled over the control socket (:meth:`query`): a ``vcom status`` process per look costs a
        third of a CPU second, and a wait would keep a core busy with nothing but that.
        """
        seen: list[dict[str, Any]] = []

        def check() -> dict[str, Any] | None:
            status = self.query(device)
            seen[:] = [status]
            return status if predicate(status) else None

        try:
            return wait_until(check, timeout, what, interval=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last status: {seen[-1] if seen else None}") from None

    def log_tail(self, lines: int = 60) -> str:
        texts = []
        for path in sorted(self.home.glob("*.log")):
            texts.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(texts) or "(no log)"

    def manager_pid(self) -> int:
        """The running manager's pid, from its pid file."""
        return int((self.home / "vcom.pid").read_text().split()[0])

    def manager_pids(self) -> set[int]:
        """Processes of this VCOM_HOME: the pid file, and any process whose environment names it."""
        pids = set()
        pid_file = self.home / "vcom.pid"
        with contextlib.suppress(OSError, ValueError):
            pids.add(int(pid_file.read_text().split()[0]))
        marker = f"VCOM_HOME={self.home}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.add(int(entry.name))
        pids.discard(os.getpid())
        return {pid for pid in pids if _alive(pid)}

    def close(self) -> None:
        """``vcom shutdown``, then TERM and KILL whatever of ours is still alive."""
        with contextlib.suppress(AssertionError):
            self.cli("shutdown", timeout=15)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.manager_pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            with contextlib.suppress(AssertionError):
                wait_until(lambda pids=pids: not any(_alive(p) for p in pids), 5, "vcom processes to exit")


def wrap_command(mode: str, *program: str) -> list[str]:
    """``program`` under ``vcom wrap``: ``mode`` "seccomp" or "preload"."""
    return [PYTHON, "-m", "vcom", "wrap", *(["--preload"] if mode == "preload" else []), *program]


class Interactive:
    """A wrapped program that prints one JSON line per step and waits for a line on stdin before the next."""

    def __init__(self, vcom: Vcom, script: str, mode: str = "seccomp") -> None:
        self.proc = subprocess.Popen(wrap_command(mode, PYTHON, "-u", "-c", textwrap.dedent(script)),
                                     env=vcom.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)

    def expect(self, timeout: float = 20) -> Any:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            raise AssertionError(f"the program said nothing within {timeout} s: {self.proc.stderr.read()}")
        return json.loads(line)

    def send(self, line: str = "next") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):  # a write still buffered for a program that has gone
                    pipe.close()


class NamespacedManager:
    """``vcom run`` (or a script that ends in it) under ``unshare --net`` and whatever more ``unshare`` is
    given: a network namespace of its own; ``inside()`` runs a command in that network namespace.  The
    manager's output goes to ``namespaced.log`` in the home."""

    def __init__(self, vcom: Vcom, script: str, *args: str, unshare: Sequence[str] = ("--net",)) -> None:
        self.log = vcom.home / "namespaced.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(["unshare", *unshare, "sh", "-c", script, *args], env=vcom.env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        wait_until(lambda: self.proc.poll() is not None or vcom_control.manager_running(vcom.home / "vcom.sock"),
                   15, "the manager in its namespace")
        assert self.proc.poll() is None, self.log.read_text()

    def prefix(self) -> list[str]:
        return ["nsenter", "--target", str(self.proc.pid), "--net", "--"]

    def inside(self, *command: str) -> None:
        subprocess.run([*self.prefix(), *command], check=True, capture_output=True, timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def unused_gid() -> int:
    """A group id no group of the machine has: for a group ``vcom`` that exists only in a test's mount
    namespace (a copy of /etc/group bound over the real one)."""
    import grp

    taken = {group.gr_gid for group in grp.getgrall()}
    return next(gid for gid in range(64000, 65000) if gid not in taken)


def has_7e1(stty_a: str) -> bool:
    """Whether ``stty -a`` printed seven data bits with parity on."""
    words = stty_a.split()
    return "cs7" in words and "parenb" in words and "-parenb" not in words


def run_as(uid: int, gid: int, groups: Sequence[int], action: Callable[[], str], timeout: float = 30.0) -> str:
    """Run ``action`` in a forked child with these user, group and supplementary group ids; its result,
    or ``"ExceptionName: message"`` if it raised.  The child never returns into the test."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.setgroups(list(groups))
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            try:
                result = action()
            except Exception as exc:  # reported to the parent
                result = f"{type(exc).__name__}: {exc}"
            os.write(write_end, result.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], timeout)
        assert ready, "the child did not answer"
        answer = b""
        while chunk := os.read(read_end, 65536):
            answer += chunk
        return answer.decode()
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie is dead; its parent just has not reaped it


# ---------------------------------------------------------------------------
# Script entry points: the proxy and the hostile servers run as processes.


def _listen(port: int) -> socket.socket:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(8)
    return server


def _append_line(path: str, text: str) -> None:
    with open(path, "a") as out:
        out.write(text + "\n")


def run_proxy(listen_port: int, target_port: int, record: str) -> None:
    """Relay each accepted connection to 127.0.0.1:target_port, recording both directions."""
    server = _listen(listen_port)
    peer: dict[socket.socket, tuple[socket.socket, int, str]] = {}
    count = 0
    while True:
        readable, _, _ = select.select([server, *peer], [], [])
        for sock in readable:
            if sock is server:
                client, _ = server.accept()
                try:
                    upstream = socket.create_connection(("127.0.0.1", target_port), timeout=5)
                except OSError:
                    client.close()
                    continue
                upstream.settimeout(None)
                count += 1
                peer[client] = (upstream, count, "c2s")
                peer[upstream] = (client, count, "s2c")
                _append_line(record, json.dumps({"event": "open", "conn": count}))
                continue
            if sock not in peer:
                continue  # closed earlier in this round
            other, conn, direction = peer[sock]
            try:
                data = sock.recv(_CHUNK)
            except OSError:
                data = b""
            if data:
                _append_line(record, json.dumps({"event": "data", "conn": conn, "dir": direction, "hex": data.hex()}))
                with contextlib.suppress(OSError):
                    other.sendall(data)
                continue
            _append_line(record, json.dumps({"event": "close", "conn": conn, "by": direction[0]}))
            for s in (sock, other):
                peer.pop(s, None)
                s.close()


# Broken telnet: SB without SE, SE without SB, verbs without an option, an
# RFC 2217 answer too short to hold its value, IAC as the very last byte.
_BROKEN_IAC = [
    bytes([IAC, SB, COM_PORT_OPTION, 101, 0]),
    bytes([IAC, SE]),
    bytes([IAC, WILL]),
    bytes([IAC, SB, COM_PORT_OPTION, 101, IAC, SE]),
    bytes([IAC, SB, COM_PORT_OPTION, 107, IAC, IAC, IAC, SE]),
    bytes([IAC, SB]) + bytes(range(1, 250)) * 40,
    bytes([IAC, 0x99]),
    bytes([IAC]),
]


def _garbage(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randrange(1, 2048)) + rng.choice(_BROKEN_IAC)


# What the "flood" server repeats: toggles of options vcom wants (each change is answered), an unknown
# option (refused once), and SIGNATURE requests (each answered), never reading a byte of the answers.
_FLOOD = (bytes([IAC, DO, 0, IAC, DONT, 0, IAC, WILL, 3, IAC, WONT, 3, IAC, DO, 99])
          + bytes([IAC, SB, COM_PORT_OPTION, 100, IAC, SE])) * 256


def run_flood(mode: str, port: int, accept_log: str, received: str) -> None:
    """The flooding modes: each connection gets a process of its own (fork), so one never slows another."""
    server = _listen(port)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children reap themselves
    while True:
        client, _ = server.accept()
        _append_line(accept_log, f"accept {time.monotonic()!r}")
        if os.fork() == 0:
            server.close()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            with contextlib.suppress(OSError):
                _flood_one(mode, client, received)
            os._exit(0)
        client.close()


def _flood_one(mode: str, client: socket.socket, received: str) -> None:
    rng = random.Random()
    if mode == "random":
        block = rng.randbytes(1 << 16)
        while True:
            client.sendall(block)
    elif mode == "flood":
        while True:
            client.sendall(_FLOOD)
    elif mode == "subneg":
        client.sendall(bytes([IAC, SB, COM_PORT_OPTION, 100]))
        block = b"A" * (1 << 16)
        while True:
            client.sendall(block)
    elif mode == "slowloris":
        trickle = bytes([IAC, SB, COM_PORT_OPTION, 101, 0, 0])
        for byte in itertools.cycle(trickle):
            client.sendall(bytes([byte]))
            time.sleep(0.5)
    else:  # disconnect: a slow reader that crashes
        deadline = time.monotonic() + rng.uniform(0.5, 2.0)
        client.settimeout(0.05)
        while time.monotonic() < deadline:
            try:
                data = client.recv(4096)
            except TimeoutError:
                continue
            if not data:
                return
            with open(received, "ab") as out:
                out.write(data)
            time.sleep(0.05)
        # A reset, not a goodbye: what vcom had sent and this end had not acknowledged is gone.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()


def run_hostile(mode: str, port: int, accept_log: str, received: str) -> None:
    """close: accept and close at once; garbage: random bytes and broken IAC, never negotiates;
    silent: accept, swallow input, never send a byte."""
    server = _listen(port)
    clients: list[socket.socket] = []
    rng = random.Random(2217)
    while True:
        readable, _, _ = select.select([server, *clients], [], [], 0.1)
        for sock in readable:
            if sock is server:
                client, _ = server.accept()
                _append_line(accept_log, f"accept {time.monotonic()!r}")
                if mode == "close":
                    client.close()
                else:
                    client.setblocking(False)
                    clients.append(client)
                continue
            try:
                data = sock.recv(_CHUNK)
            except OSError:
                data = b""
            if not data:
                clients.remove(sock)
                sock.close()
                continue
            with open(received, "ab") as out:
                out.write(data)
        if mode == "garbage":
            for client in clients:
                # Never block: what the client does not take is dropped.
                with contextlib.suppress(BlockingIOError, OSError):
                    client.send(_garbage(rng))


# A udev "add" event as udevd re-broadcasts it (systemd's sd-device monitor format: a "libudev" header,
# then the properties), for a manager that listens to udevd.  Sent inside a network namespace the test
# made, it reaches only the processes in that namespace.
_UDEV_MONITOR_MAGIC = 0xFEEDCAFE
_NETLINK_KOBJECT_UEVENT = 15
_UDEV_GROUP = 2


def _murmur_hash2(data: bytes, seed: int = 0) -> int:
    """MurmurHash2, 32 bit: what sd-device puts in the header so subscribers can filter by subsystem in BPF."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    h = (seed ^ len(data)) & mask
    whole = len(data) // 4 * 4
    for (k,) in struct.iter_unpack("<I", data[:whole]):
        k = (k * m) & mask
        k ^= k >> 24
        h = ((h * m) & mask) ^ ((k * m) & mask)
    tail = data[whole:]
    if tail:
        for i, byte in enumerate(tail):
            h ^= byte << (8 * i)
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    return h ^ (h >> 15)


def udev_message(properties: dict[str, str]) -> bytes:
    body = b"".join(f"{key}={value}".encode() + b"\0" for key, value in properties.items())
    header_size = 40
    return (b"libudev\0" + struct.pack(">I", _UDEV_MONITOR_MAGIC)
            + struct.pack("=III", header_size, header_size, len(body))
            + struct.pack(">I", _murmur_hash2(properties["SUBSYSTEM"].encode())) + bytes(12) + body)


def send_tty_added(devnode: str) -> None:
    properties = {"ACTION": "add", "DEVPATH": f"/devices/virtual/tty/{os.path.basename(devnode)}",
                  "SUBSYSTEM": "tty", "DEVNAME": devnode, "SEQNUM": "1", "MAJOR": "136", "MINOR": "0"}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_KOBJECT_UEVENT) as sock:
        sock.bind((0, 0))
        sock.sendto(udev_message(properties), (0, _UDEV_GROUP))


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description="test peers run as processes")
    sub = parser.add_subparsers(dest="what", required=True)
    proxy = sub.add_parser("proxy")
    proxy.add_argument("listen_port", type=int)
    proxy.add_argument("target_port", type=int)
    proxy.add_argument("record")
    hostile = sub.add_parser("hostile")
    hostile.add_argument("mode", choices=HostileServer.MODES + HostileServer.FLOODS)
    hostile.add_argument("port", type=int)
    hostile.add_argument("accept_log")
    hostile.add_argument("received")
    uevent = sub.add_parser("tty-added", help="send a udev add event for a tty (in a test's network namespace)")
    uevent.add_argument("devnode")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.what == "tty-added":
        send_tty_added(args.devnode)
    elif args.what == "proxy":
        run_proxy(args.listen_port, args.target_port, args.record)
    elif args.mode in HostileServer.FLOODS:
        run_flood(args.mode, args.port, args.accept_log, args.received)
    else:
        run_hostile(args.mode, args.port, args.accept_log, args.received)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(sys.argv[1:])
