"""A Modbus RTU server on a far UART, behind ser2net: what a Modbus client on a vcom port talks to.

Two ptys wired back to back by socat: ser2net drives one as its serial
device, a pymodbus RTU server the other.  Device 7 holds registers 0.. with
the values 1000, 1001, ...
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from peers import PYTHON, Ser2net, wait_until

DEVICE_ID = 7
REGISTERS = [1000 + i for i in range(20)]

_SERVER = """
    from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
    from pymodbus.server import StartSerialServer
    block = ModbusSequentialDataBlock(1, {registers!r})  # register 0 holds the first value
    context = ModbusServerContext(devices={{{device}: ModbusDeviceContext(hr=block)}}, single=False)
    # The far pty carries bytes only: its own framing is the pty's 8N1.
    StartSerialServer(context=context, port={port!r}, baudrate=19200)
"""


@contextlib.contextmanager
def modbus_behind_ser2net(tmp_path: Path, start_peer: Callable[[Ser2net], Ser2net]) -> Iterator[Ser2net]:
    pytest.importorskip("pymodbus")
    if shutil.which("ser2net") is None or shutil.which("socat") is None:
        pytest.skip("ser2net and socat are needed")
    far, server_side = tmp_path / "modbus-far", tmp_path / "modbus-server"
    wire = subprocess.Popen(["socat", f"pty,raw,echo=0,link={far}", f"pty,raw,echo=0,link={server_side}"],
                            stderr=subprocess.DEVNULL)
    server = None
    try:
        wait_until(lambda: far.exists() and server_side.exists(), 10, "socat's ptys")
        ser2net = start_peer(Ser2net(tmp_path / "modbus-ser2net", os.path.realpath(far)))
        script = textwrap.dedent(_SERVER.format(registers=REGISTERS, device=DEVICE_ID, port=str(server_side)))
        server = subprocess.Popen([PYTHON, "-c", script], stderr=subprocess.DEVNULL)
        yield ser2net
    finally:
        for proc in (server, wire):
            if proc is None:
                continue
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
