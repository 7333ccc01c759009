"""Modem lines and break requested by programs, through the preload library.

A pty has no modem lines, so a program's TIOCMSET or tcsendbreak never
reaches the manager.  ``vcom wrap PROGRAM`` runs the program with
``vcom/preload/vcom_lines.c`` preloaded; the library sends each such call
here, one line each way (``"RDEV OP VALUE"`` -> ``"ok BITS"``), and the port
turns it into SET-CONTROL commands at once, in order, without waiting for the
server's answers: an ESP32 reset dance of DTR/RTS changes tens of
milliseconds apart reaches the server as the program made it.

Who may ask: the socket is open to every local user (programs run as members
of ``dialout``), so each request is checked against the caller's process
(SO_PEERCRED): it must hold the port's pty slave open.  A process can only
drive the lines of a port it could write to anyway.

The library is compiled on first use with the system C compiler into the
cache directory, so installing vcom needs no compiler.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Callable
from importlib import resources
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = "vcom_lines.c"
MAX_LINE = 256

# Ops the library sends; the port answers with the TIOCM_* bits in force.
OPS = ("get", "set", "bis", "bic", "break_on", "break_off", "break")


class LinesServer:
    def __init__(self, path: Path, ports_by_rdev: Callable[[int], object | None]) -> None:
        self.path = path
        self._find = ports_by_rdev
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._server = await asyncio.start_unix_server(self._client, path=str(self.path), limit=MAX_LINE)
        os.chmod(self.path, 0o666)  # access is decided per request, by who holds the port open

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            writer.write(self._answer(line, _peer_pid(writer)).encode())
            await writer.drain()
        except (ConnectionError, TimeoutError, ValueError):
            pass
        finally:
            writer.close()

    def _answer(self, line: bytes, pid: int) -> str:
        try:
            rdev_text, op, value_text = line.decode("ascii").split()
            rdev, value = int(rdev_text), int(value_text)
        except (UnicodeDecodeError, ValueError):
            return "no\n"
        port = self._find(rdev)
        if port is None or op not in OPS:
            return "no\n"
        if not _holds_open(pid, port.pty.slave_path):  # type: ignore[attr-defined]
            log.warning("lines request for %s from pid %d, which does not have it open: refused",
                        port.name, pid)  # type: ignore[attr-defined]
            return "no\n"
        bits = port.program_ioctl(op, value)  # type: ignore[attr-defined]
        return f"ok {bits}\n"


def _peer_pid(writer: asyncio.StreamWriter) -> int:
    sock = writer.get_extra_info("socket")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)[0]


def _holds_open(pid: int, slave_path: str) -> bool:
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        entries = list(fd_dir.iterdir())
    except OSError:
        return False
    for entry in entries:
        with contextlib.suppress(OSError):
            if os.readlink(entry) == slave_path:
                return True
    return False


class PreloadError(Exception):
    """The preload library cannot be built; one-line reason."""


def library(cache: Path) -> Path:
    """Path of the compiled preload library, building it when the source changed."""
    source = resources.files("vcom").joinpath("preload", SOURCE).read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:12]
    target = cache / f"vcom_lines-{digest}.so"
    if target.exists():
        return target
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        raise PreloadError("no C compiler (cc) to build the modem-line library; install gcc")
    cache.mkdir(parents=True, exist_ok=True)
    src = cache / f"vcom_lines-{digest}.c"
    src.write_bytes(source)
    tmp = cache / f".vcom_lines-{digest}.{os.getpid()}.so"
    result = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(tmp), str(src), "-ldl"],
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise PreloadError(f"building the modem-line library failed: {result.stderr.strip().splitlines()[-1:]}")
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)
    return target
