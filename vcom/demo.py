"""``vcom demo``: the whole chain on one machine, no root, nothing else installed.

    sim:gps ─ vcom share (RFC 2217 on 127.0.0.1) ─ network ─ link ─ port ─ pty ─ /tmp/vcom-demo-*/ttyV0 ─ pyserial

A simulated GPS is shared by the built-in RFC 2217 server on loopback; a
virtual port reaches it like any remote device server; and a program opens
the virtual port with pyserial at 4800 baud, as gpsd would, reads the NMEA
sentences and prints the positions.  The 4800 baud travel the same way as in
production: the program's termios, SET-BAUDRATE over the wire, and the
simulated UART pacing its output to that speed.

Everything runs in one asyncio loop in this process, and everything is
removed on Ctrl-C or after ``--seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

import serial

from .config import PortConfig
from .manager import SlaveWatcher
from .port import LinkGroup, Port
from .share import Share, ShareConfig
from .sim import parse_position

DEMO_BAUD = 4800


class _NmeaReader:
    """The demo's "program": collects lines from the port and reports positions."""

    def __init__(self, port: serial.Serial, show: Callable[[str], None]) -> None:
        self._port = port
        self._show = show
        self._partial = b""
        self.bytes = 0
        self.positions = 0

    def readable(self) -> None:
        data = self._port.read(4096)
        self.bytes += len(data)
        self._partial += data
        *lines, self._partial = self._partial.split(b"\n")
        self._partial = self._partial[-4096:]  # a line never grows without bound, even on garbage
        for raw in lines:
            line = raw.strip().decode("ascii", "replace")
            position = parse_position(line)
            if position is None:
                continue
            self.positions += 1
            lat, lon = position
            kind, stamp = line[3:6], line.split(",")[1]
            clock = f"{stamp[0:2]}:{stamp[2:4]}:{stamp[4:6]}" if len(stamp) >= 6 else "--:--:--"
            north, east = ("N" if lat >= 0 else "S"), ("E" if lon >= 0 else "W")
            self._show(f"{clock} UTC  {kind}  {abs(lat):9.5f} {north}  {abs(lon):10.5f} {east}"
                       f"   ({self.bytes} bytes read so far)")


async def run(seconds: float | None, show: Callable[[str], None] = print) -> int:
    """Run the demo; returns the exit status (0 once positions came through)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    workdir = Path(tempfile.mkdtemp(prefix="vcom-demo-"))
    device = workdir / "ttyV0"
    share = Share(ShareConfig(device="sim:gps", listen_host="127.0.0.1", listen_port=0, protocol="rfc2217"))
    watcher = SlaveWatcher(loop)
    port: Port | None = None
    program: serial.Serial | None = None
    reader: _NmeaReader | None = None
    try:
        await share.start()
        target = f"rfc2217://127.0.0.1:{share.port}"
        config = PortConfig(device=str(device), target=target, baud=DEMO_BAUD, connect="on-open", linger=0)
        port = Port(config, LinkGroup(config), watcher.watch)
        port.start()
        show(f"sim:gps  -> vcom share on {target}")
        show(f"{target} -> virtual port {device}")
        show(f"a program opens {device} at {DEMO_BAUD} baud (pyserial) and reads NMEA; Ctrl-C stops")
        program = serial.Serial(str(device), DEMO_BAUD, timeout=0)
        reader = _NmeaReader(program, show)
        loop.add_reader(program.fileno(), reader.readable)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):  # not wait_for: see vcom.link.Link._run
                await stop.wait()
        remote = port.status()["remote_settings"]
        show(f"server acknowledged {remote['baud']} baud, {remote['data_bits']} data bits; "
             f"{reader.positions} positions, {reader.bytes} bytes through {device}")
        return 0 if reader.positions else 1
    finally:
        if program is not None:
            loop.remove_reader(program.fileno())
            program.close()
        if port is not None:
            await port.close()
        await share.close()
        watcher.close()
        shutil.rmtree(workdir, ignore_errors=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
