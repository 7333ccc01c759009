"""vcom against peers that are not vcom, driven through the CLI and the manager:

- UDP in both roles against socat: vcom's UDP client to socat's UDP server,
  and socat's UDP client to ``vcom share --protocol udp``;
- sredird (an RFC 2217 server in C, inetd-style, socat supplying the
  listener) behind ``vcom add``.

Each far end is a pty "UART" the test holds (peers.PtyDevice), so data is
checked byte-exact at both ends.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from peers import PtyDevice, Socat, Vcom, handshake, read_exact, stty, wait_settings, write_all


@pytest.fixture(autouse=True)
def _need_socat() -> None:
    if shutil.which("socat") is None:
        pytest.skip("socat is not installed")


def test_vcom_udp_client_against_socat_udp_server(vcom: Vcom, device: PtyDevice, start_peer, open_port,
                                                  tmp_path: Path):
    # socat answers the first sender and bridges its datagrams to the "UART".
    server = start_peer(Socat(tmp_path / "socat", "UDP-LISTEN:{port},bind=127.0.0.1", f"GOPEN:{device.path}",
                              kind="udp"))
    port = tmp_path / "ttyU0"
    vcom.add(port, f"udp://127.0.0.1:{server.port}")
    fd = open_port(port)
    vcom.wait_status(port, lambda s: s["state"] == "connected", what="the UDP link up")
    up = bytes(range(256)) * 4  # every byte value, 0xFF and NUL included: raw data, no telnet
    write_all(fd, up)
    assert device.read_exact(len(up)) == up
    down = bytes(reversed(range(256))) * 4
    device.write(down)
    assert read_exact(fd, len(down)) == down
    status = vcom.status(port)
    assert (status["bytes_to_remote"], status["bytes_from_remote"]) == (len(up), len(down))


def test_socat_udp_client_against_vcom_udp_share(vcom: Vcom, make_device, start_peer, tmp_path: Path):
    shared, far = make_device(), make_device()
    listen = vcom.share(shared.path, "--protocol", "udp")
    # socat reads the far "UART" and sends what it reads to the share; the share answers to socat's address.
    start_peer(Socat(tmp_path / "socat", f"GOPEN:{far.path}", f"UDP:127.0.0.1:{listen},bind=127.0.0.1",
                     listeners=0))
    up = bytes(range(256)) * 4
    far.write(up)
    assert shared.read_exact(len(up)) == up
    vcom.wait_status(shared.path, lambda s: len(s["clients"]) == 1, what="socat known as a client")
    down = bytes(reversed(range(256))) * 4
    shared.write(down)
    assert far.read_exact(len(down)) == down
    (client,) = vcom.status(shared.path)["clients"]
    assert (client["bytes_in"], client["bytes_out"]) == (len(up), len(down))


def test_sredird_through_the_manager(vcom: Vcom, device: PtyDevice, start_peer, open_port, tmp_path: Path):
    if shutil.which("sredird") is None:
        pytest.skip("sredird is not installed")
    lock = tmp_path / "sredird.lock"
    server = start_peer(Socat(tmp_path / "sredird", "TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
                              f"EXEC:sredird 7 {device.path} {lock},nofork"))
    port = tmp_path / "ttyS0"
    vcom.add(port, f"127.0.0.1:{server.port}")
    fd = open_port(port)
    handshake(fd, device)
    stty(port, "19200", "cstopb", "crtscts")
    wait_settings(device, baud=19200, cstopb=True, crtscts=True)
    handshake(fd, device)  # data still flows both ways after the change
    # sredird answers SET-BAUDRATE with 8 bytes and DTR/RTS always with 1: taken as they come.
    status = vcom.wait_status(port, lambda s: s["remote_settings"]["baud"] == 19200
                              and s["remote_settings"]["stop_bits"] == "2", what="sredird's answers")
    assert status["com_port"] is True and status["signature"].startswith("SRedird")
    assert status["remote_settings"]["flow_out"] == "rtscts"
    payload = bytes(range(256)) * 64  # 0xFF doubled on the wire both ways
    write_all(fd, payload)
    assert device.read_exact(len(payload)) == payload
    device.write(payload)
    assert read_exact(fd, len(payload)) == payload
