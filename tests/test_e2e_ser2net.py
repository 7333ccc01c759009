"""End to end against ser2net: a program on a vcom port, ser2net as the device
server, a pty as the far-end UART.

What the program sets with termios must show up on the far tty, data must
cross unchanged in both directions at once, and a server that dies and comes
back must not disturb the program: its fd stays usable and its settings are
applied again to the new session.
"""

from __future__ import annotations

import hashlib
import os
import signal
import termios

import serial
from peers import (
    SET_BAUDRATE,
    Data,
    PtyDevice,
    Ser2net,
    Stream,
    Subnegotiation,
    Vcom,
    WireProxy,
    com_port_commands,
    drain,
    handshake,
    poke,
    pump,
    read_until,
    stty,
    wait_settings,
    wait_until,
    write_all,
)

MiB = 1 << 20
# Bytes a telnet layer must pass through untouched: IAC alone and doubled,
# CR NUL and CR LF (changed without BINARY), and what looks like IAC SB ... IAC SE.
TELNET_TRAPS = b"\xff\xff\xff\r\x00\r\n\xff\xfa\x2c\x01\xff\xf0\r"


def rfc2217_target(server: Ser2net) -> str:
    return f"127.0.0.1:{server.port}"


def sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def test_stty_on_an_open_port_reaches_the_device(vcom: Vcom, ser2net: Ser2net, device: PtyDevice, open_port, tmp_path):
    port = tmp_path / "ttyV0"
    vcom.add(port, rfc2217_target(ser2net))
    fd = open_port(port)
    handshake(fd, device)

    stty(port, "19200", "cstopb", "crtscts")

    wait_settings(device, baud=19200, cstopb=True, crtscts=True)
    status = vcom.wait_status(port, lambda s: s["remote_settings"]["baud"] == 19200, what="baud acknowledged")
    assert status["state"] == "connected"
    assert status["open"] is True
    assert status["com_port"] is True
    assert status["settings"]["baud"] == 19200
    assert status["settings"]["stop_bits"] == "2"
    assert status["settings"]["flow_out"] == "rtscts"
    assert status["settings"]["flow_in"] == "rtscts"


def test_pyserial_arbitrary_speed_two_stop_bits_and_rtscts(vcom: Vcom, ser2net: Ser2net, device, tmp_path):
    port = tmp_path / "ttyV0"
    vcom.add(port, rfc2217_target(ser2net))
    with serial.Serial(str(port), 250000, stopbits=2, rtscts=True, timeout=0) as program:
        handshake(program.fileno(), device)
        # 250000 is no Bxxx code: pyserial sets it with BOTHER, the far tty must get it exactly.
        wait_settings(device, baud=250000, ispeed=250000, bother=True, cstopb=True, crtscts=True)
        status = vcom.wait_status(port, lambda s: s["remote_settings"]["baud"] == 250000, what="baud acknowledged")
        assert status["settings"]["baud"] == 250000
        assert status["settings"]["stop_bits"] == "2"

        program.write(b"through\xff\x00\r\n")
        assert device.read_exact(11) == b"through\xff\x00\r\n"


def test_pyserial_xonxoff_reaches_the_device(vcom: Vcom, ser2net: Ser2net, device, tmp_path):
    port = tmp_path / "ttyV0"
    vcom.add(port, rfc2217_target(ser2net))
    with serial.Serial(str(port), 38400, xonxoff=True, timeout=0) as program:
        handshake(program.fileno(), device)
        wait_settings(device, baud=38400, ixon=True, ixoff=True, crtscts=False)
        status = vcom.status(port)
        assert status["settings"]["flow_out"] == "xonxoff"
        assert status["settings"]["flow_in"] == "xonxoff"

        program.xonxoff = False
        wait_settings(device, ixon=False, ixoff=False)


def test_one_mebibyte_each_way_at_once(vcom: Vcom, ser2net: Ser2net, device: PtyDevice, open_port, tmp_path):
    port = tmp_path / "ttyV0"
    vcom.add(port, rfc2217_target(ser2net))
    fd = open_port(port)
    handshake(fd, device)
    to_device = TELNET_TRAPS + os.urandom(MiB - len(TELNET_TRAPS))
    to_program = TELNET_TRAPS + os.urandom(MiB - len(TELNET_TRAPS))

    streams = [Stream(fd, device.master, to_device), Stream(device.master, fd, to_program)]
    pump(streams, timeout=40)

    assert sha(streams[0].received) == sha(to_device)
    assert sha(streams[1].received) == sha(to_program)
    status = vcom.status(port)
    assert status["bytes_to_remote"] >= MiB
    assert status["bytes_from_remote"] >= MiB
    assert status["dropped_bytes"] == 0


def test_raw_tcp_target_is_byte_exact(vcom: Vcom, ser2net: Ser2net, device: PtyDevice, open_port, tmp_path):
    port = tmp_path / "ttyV0"
    vcom.add(port, ser2net.raw_target)
    fd = open_port(port)
    handshake(fd, device)
    to_device, to_program = os.urandom(256 * 1024), os.urandom(256 * 1024)

    streams = [Stream(fd, device.master, to_device), Stream(device.master, fd, to_program)]
    pump(streams, timeout=30)

    assert sha(streams[0].received) == sha(to_device)
    assert sha(streams[1].received) == sha(to_program)
    assert vcom.status(port)["com_port"] is not True  # raw TCP has no RFC 2217 to speak of


def test_server_killed_and_restarted_mid_stream(vcom: Vcom, ser2net: Ser2net, device: PtyDevice, open_port, tmp_path):
    port = tmp_path / "ttyV0"
    vcom.add(port, rfc2217_target(ser2net))
    fd = open_port(port)
    stty(port, "19200", "cstopb")
    handshake(fd, device)
    wait_settings(device, baud=19200, cstopb=True)

    # A stream is flowing towards the device when the server dies.
    payload = os.urandom(512 * 1024)
    stream = Stream(fd, device.master, payload)
    wait_until(lambda: _advance(stream) >= 32 * 1024, 15, "32 KiB to reach the device")
    ser2net.kill()
    # The far tty forgets what it was told, so seeing 19200 again proves a re-apply.
    device.reset(termios.B9600)

    # The server is gone: the program keeps writing and reading without error.
    vcom.wait_status(port, lambda s: s["state"] in ("backoff", "connecting"), what="the loss noticed")
    for _ in range(20):
        _advance(stream)
        poke(fd)
    termios.tcgetattr(fd)  # the fd is still a working tty

    ser2net.start()
    status = vcom.wait_status(
        port, lambda s: s["state"] == "connected" and s["reconnects"] >= 1, timeout=30, what="reconnected"
    )
    assert status["open"] is True
    wait_settings(device, baud=19200, cstopb=True)

    # Data flows again both ways (what was in flight during the outage may be lost).
    drain(device.master)
    token = os.urandom(6).hex().encode()
    write_all(fd, b"<after:" + token + b">")
    device.read_until(b"<after:" + token + b">", timeout=15)
    device.write(b"<back:" + token + b">")
    read_until(fd, b"<back:" + token + b">", timeout=15)
    assert vcom.status(port)["reconnects"] >= 1


def _advance(stream: Stream) -> int:
    """Write what the program's buffer takes and read what the device got; bytes received so far."""
    if stream.sent < len(stream.payload):
        try:
            stream.sent += os.write(stream.source, stream.payload[stream.sent : stream.sent + 4096])
        except BlockingIOError:
            pass
    stream.received += drain(stream.sink)
    return len(stream.received)


def test_settings_change_is_ordered_with_data_on_the_wire(
    vcom: Vcom, ser2net: Ser2net, device: PtyDevice, start_peer, open_port, tmp_path
):
    proxy = start_peer(WireProxy(tmp_path / "proxy", ser2net.port))
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{proxy.port}")
    fd = open_port(port)
    handshake(fd, device)
    write_all(fd, b"<before-change>")
    device.read_until(b"<before-change>")

    stty(port, "19200")
    write_all(fd, b"<after-change>")
    device.read_until(b"<after-change>")
    wait_settings(device, baud=19200)

    # The data stream up to the SET-BAUDRATE 19200 must hold the first text
    # and not the second: a change reaches the server before later data.
    data_before = bytearray()
    for item in proxy.client_items():
        if isinstance(item, Data):
            data_before += item.data
        elif isinstance(item, Subnegotiation) and com_port_commands([item], SET_BAUDRATE) and item.number == 19200:
            break
    else:
        raise AssertionError(f"no SET-BAUDRATE 19200 on the wire: {com_port_commands(proxy.client_items())}")
    assert b"<before-change>" in data_before
    assert b"<after-change>" not in data_before

    def acknowledged() -> bool:
        return any(answer.number == 19200 for answer in com_port_commands(proxy.server_items(), SET_BAUDRATE + 100))

    wait_until(acknowledged, 10, "the server's answer to SET-BAUDRATE 19200 on the wire")


def test_run_in_foreground_and_sigterm_removes_ports(vcom: Vcom, ser2net: Ser2net, tmp_path):
    manager = vcom.start_manager()
    try:
        port = tmp_path / "ttyV0"
        vcom.add(port, rfc2217_target(ser2net))
        assert manager.poll() is None, "`vcom add` must use the manager already running"
        # `vcom run` is the keeper; the manager answering is its child.
        assert _parent(vcom.manager_pid()) == manager.pid

        manager.send_signal(signal.SIGTERM)
        assert manager.wait(timeout=15) == 0, vcom.log_tail()
        assert not os.path.lexists(port)
    finally:
        if manager.poll() is None:
            manager.kill()
            manager.wait(timeout=10)


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])
