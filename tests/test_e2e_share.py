"""End to end through vcom's own server: ``vcom share`` and ``vcom add`` in one
manager, driven only through the CLI, with a pty or a simulated device at the
far end.  Also UDP in both roles, split ports and ``vcom demo``.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys

import serial
from peers import (
    PtyDevice,
    Vcom,
    handshake,
    read_exact,
    read_until,
    stty,
    wait_settings,
    wait_until,
    write_all,
)


def test_every_setting_crosses_vcom_client_to_vcom_server(vcom: Vcom, device: PtyDevice, open_port, tmp_path):
    listen = vcom.share(device.path)
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{listen}")
    fd = open_port(port)
    handshake(fd, device)

    stty(port, "19200", "cstopb", "crtscts")
    wait_settings(device, baud=19200, cstopb=True, crtscts=True)
    stty(port, "115200", "-cstopb", "-crtscts", "ixon", "ixoff")
    wait_settings(device, baud=115200, cstopb=False, crtscts=False, ixon=True, ixoff=True)

    status = vcom.wait_status(port, lambda s: s["remote_settings"]["baud"] == 115200, what="baud acknowledged")
    assert status["com_port"] is True
    assert status["signature"].startswith("vcom")
    assert status["remote_settings"]["stop_bits"] == "1"
    assert status["remote_settings"]["flow_out"] == "xonxoff"
    assert status["remote_settings"]["flow_in"] == "xonxoff"
    # The server side shows the same line and this one client.
    shared = vcom.status(device.path)
    assert shared["settings"]["baud"] == 115200
    assert len(shared["clients"]) == 1 and shared["clients"][0]["com_port"] is True


def test_arbitrary_speed_via_pyserial_reaches_the_far_tty(vcom: Vcom, device: PtyDevice, tmp_path):
    listen = vcom.share(device.path)
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{listen}")
    with serial.Serial(str(port), 250000, stopbits=2, timeout=0) as program:
        handshake(program.fileno(), device)
        wait_settings(device, baud=250000, bother=True, cstopb=True)
        payload = os.urandom(64 * 1024)
        write_all(program.fileno(), payload)
        assert device.read_exact(len(payload)) == payload


def test_udp_in_both_roles(vcom: Vcom, open_port, tmp_path):
    listen = vcom.share("sim:echo", "--protocol", "udp")
    port = tmp_path / "ttyU0"
    vcom.add(port, f"udp://127.0.0.1:{listen}", "--baud", "115200")
    fd = open_port(port)
    stty(port, "115200")
    vcom.wait_status(port, lambda s: s["state"] == "connected", what="the UDP link up")
    # Datagrams may be lost by design; on loopback at this rate they are not, so the echo is exact.
    message = b"over udp \x00\xff\r\n" * 40
    write_all(fd, message)
    echoed = read_exact(fd, len(message))
    assert echoed == message
    status = vcom.status(port)
    assert status["target"].startswith("udp://")
    assert status["bytes_from_remote"] >= len(message)


def test_split_ports_share_one_connection(vcom: Vcom, open_port, tmp_path):
    listen = vcom.share("sim:echo", "--max-clients", "1")
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    vcom.add(a, f"127.0.0.1:{listen}", "--baud", "115200")
    vcom.add(b, f"127.0.0.1:{listen}", "--split-of", str(a))
    fa, fb = open_port(a), open_port(b)
    stty(a, "115200")
    write_all(fb, b"<from B>")
    # The echo of what B wrote reaches both programs, over the one connection the server allows.
    assert read_until(fa, b"<from B>").endswith(b"<from B>")
    assert read_until(fb, b"<from B>").endswith(b"<from B>")
    status_b = vcom.status(b)
    assert status_b["split_group"] == [str(a), str(b)]
    assert status_b["settings_from"] == str(a)
    assert vcom.status("sim:echo")["refused_clients"] == 0
    removal = vcom.cli("remove", str(a))
    assert removal.returncode != 0 and "split" in removal.stderr


def test_share_refuses_bad_input_in_one_line(vcom: Vcom):
    for args, words in [
        (["share", "/dev/nonexistent-tty"], "no such device"),
        (["share", "sim:teapot"], "sim:echo"),
        (["share", "sim:echo", "--listen", "127.0.0.1:99999"], "between 0 (any free port) and 65535"),
        (["share", "sim:echo", "--listen", "::1:4001"], "brackets"),
        (["share", "sim:echo", "--protocol", "smtp"], "smtp"),
    ]:
        result = vcom.cli(*args)
        assert result.returncode != 0, args
        assert words in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr
    taken = vcom.share("sim:echo")
    result = vcom.cli("share", "sim:gps", "--listen", f"127.0.0.1:{taken}")
    assert result.returncode != 0 and "in use" in result.stderr.lower(), result.stderr


def test_demo_shows_positions_and_cleans_up(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "vcom", "demo", "--seconds", "3"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    positions = [line for line in result.stdout.splitlines() if " N " in line and " E " in line]
    assert positions, result.stdout
    assert "server acknowledged 4800 baud" in result.stdout
    wait_until(lambda: not any(tmp_path.iterdir()), 5, "demo directory removed")


def test_a_client_that_dies_with_device_data_unread_is_counted_as_lost(vcom: Vcom, device: PtyDevice):
    """A client stops reading, the device keeps sending, the client's connection is reset: what the share
    held for it (its queue and its socket's unacknowledged bytes) is counted in lost_bytes, not silently
    gone."""
    shared = vcom.share(device.path, "--protocol", "tcp")
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # reads nothing: fills at once
    client.connect(("127.0.0.1", shared))
    try:
        wait_until(lambda: len(vcom.query(device.path)["clients"]) == 1, 15, "the client admitted")
        # 96 KiB: far more than the client's window takes, less than makes a lone slow client hold the
        # device back.  All of it is handed to the client's socket or queued for it, never acknowledged.
        device.write(bytes(range(256)) * 384)
        wait_until(lambda: sum(vcom.query(device.path)["clients"][0][k] for k in ("bytes_out", "queued"))
                   >= 96 * 1024, 15, "the device data handed to the client")
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    finally:
        client.close()
    # What the client acknowledged is at most its receive window (about 8 KiB here).
    status = wait_until(lambda: (s := vcom.query(device.path))["lost_bytes"] > 0 and s, 15, "the loss counted")
    assert 96 * 1024 - 32 * 1024 <= status["lost_bytes"] <= 96 * 1024, status["lost_bytes"]
    assert status["clients"] == []
    assert "never acknowledged" in vcom.log_tail(200)
