"""End to end against pyserial's RFC 2217 server (tests/pyserial_server.py).

A second, independent server implementation: the same settings must reach the
far tty and the same data must cross unchanged.  pyserial's server answers
differently from ser2net (no answer to queries, WILL to the client's DO), so
passing against both is what shows the client relies on the RFC, not on one
server's habits.
"""

from __future__ import annotations

import hashlib
import os

import serial
from peers import PtyDevice, PyserialServer, Stream, Vcom, handshake, pump, stty, wait_settings

KiB = 1 << 10
TELNET_TRAPS = b"\xff\xff\xff\r\x00\r\n\xff\xfa\x2c\x01\xff\xf0\r"


def target(server: PyserialServer) -> str:
    return f"rfc2217://127.0.0.1:{server.port}"


def test_stty_on_an_open_port_reaches_the_device(vcom: Vcom, pyserial_server: PyserialServer, device: PtyDevice,
                                                 open_port, tmp_path):
    port = tmp_path / "ttyV0"
    vcom.add(port, target(pyserial_server))
    fd = open_port(port)
    handshake(fd, device)

    stty(port, "19200", "cstopb", "crtscts")

    wait_settings(device, baud=19200, cstopb=True, crtscts=True)
    status = vcom.wait_status(port, lambda s: s["remote_settings"]["baud"] == 19200, what="baud acknowledged")
    assert status["state"] == "connected"
    assert status["com_port"] is True
    assert status["settings"]["stop_bits"] == "2"
    assert status["settings"]["flow_out"] == "rtscts"


def test_pyserial_arbitrary_speed_two_stop_bits_and_rtscts(vcom: Vcom, pyserial_server: PyserialServer,
                                                           device: PtyDevice, tmp_path):
    port = tmp_path / "ttyV0"
    vcom.add(port, target(pyserial_server))
    with serial.Serial(str(port), 250000, stopbits=2, rtscts=True, timeout=0) as program:
        handshake(program.fileno(), device)
        wait_settings(device, baud=250000, ispeed=250000, bother=True, cstopb=True, crtscts=True)
        status = vcom.wait_status(port, lambda s: s["remote_settings"]["baud"] == 250000, what="baud acknowledged")
        assert status["remote_settings"]["stop_bits"] == "2"

        program.write(b"through\xff\x00\r\n")
        assert device.read_exact(11) == b"through\xff\x00\r\n"


def test_pyserial_xonxoff_reaches_the_device(vcom: Vcom, pyserial_server: PyserialServer, device: PtyDevice, tmp_path):
    port = tmp_path / "ttyV0"
    vcom.add(port, target(pyserial_server))
    with serial.Serial(str(port), 57600, xonxoff=True, timeout=0) as program:
        handshake(program.fileno(), device)
        wait_settings(device, baud=57600, ixon=True, ixoff=True, crtscts=False)

        program.xonxoff = False
        wait_settings(device, ixon=False, ixoff=False)


def test_data_each_way_at_once(vcom: Vcom, pyserial_server: PyserialServer, device: PtyDevice, open_port, tmp_path):
    port = tmp_path / "ttyV0"
    vcom.add(port, target(pyserial_server))
    fd = open_port(port)
    handshake(fd, device)
    to_device = TELNET_TRAPS + os.urandom(64 * KiB)
    to_program = TELNET_TRAPS + os.urandom(64 * KiB)

    streams = [Stream(fd, device.master, to_device), Stream(device.master, fd, to_program)]
    pump(streams, timeout=30)

    assert hashlib.sha256(streams[0].received).digest() == hashlib.sha256(to_device).digest()
    assert hashlib.sha256(streams[1].received).digest() == hashlib.sha256(to_program).digest()
