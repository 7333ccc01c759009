"""vcom ports over TLS to ser2net's TLS accepter (``telnet(rfc2217),ssl(key=...,cert=...),tcp,...``), with
and without client authentication, and raw TCP over TLS: settings and data both ways, through the CLI.

ser2net and its gensio TLS are an independent implementation; a pty plays the UART behind it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from peers import PtyDevice, Vcom, handshake, stty, wait_settings
from tls_peers import Certs, Ser2netTls, wait_query

CLIENT_NAME = "vcom-client"


@pytest.fixture
def s2n(tmp_path: Path, device: PtyDevice, start_peer) -> tuple[Ser2netTls, Certs]:
    if shutil.which("ser2net") is None:
        pytest.skip("ser2net is not installed")
    certs = Certs(tmp_path / "pki")
    server = start_peer(Ser2netTls(tmp_path / "ser2net", device.path, certs.server(), certs.ca_file, CLIENT_NAME))
    return server, certs


def test_rfc2217_over_tls_to_ser2net(vcom: Vcom, s2n, device: PtyDevice, open_port, tmp_path: Path) -> None:
    server, certs = s2n
    port = tmp_path / "ttyT0"
    vcom.add(port, f"rfc2217+tls://127.0.0.1:{server.port}", "--tls-ca", str(certs.ca_file))
    fd = open_port(port)
    handshake(fd, device)
    stty(port, "19200", "cstopb", "crtscts")
    wait_settings(device, baud=19200, cstopb=True, crtscts=True)

    status = wait_query(vcom, port, lambda s: s["remote_settings"]["baud"] == 19200, "baud acknowledged")
    assert status["com_port"] is True and status["signature"] == "ser2net"
    tls = status["tls"]
    assert tls["version"] in ("TLSv1.2", "TLSv1.3") and tls["verify"] is True
    assert tls["server_name"] == "127.0.0.1" and tls["ca"] == str(certs.ca_file)
    assert "127.0.0.1" in tls["peer"]["names"] and tls["peer"]["not_after"].endswith("Z")
    handshake(fd, device)  # still both ways after the settings

    # ser2net dies and comes back: a new handshake, and the settings again (ser2net restored the tty).
    server.kill()
    device.reset()
    server.start()
    wait_query(vcom, port, lambda s: s["reconnects"] >= 1 and s["state"] == "connected", "the reconnect")
    wait_settings(device, baud=19200, cstopb=True, crtscts=True)
    handshake(fd, device)


def test_ser2net_requiring_a_client_certificate(vcom: Vcom, s2n, device: PtyDevice, open_port, tmp_path: Path) -> None:
    server, certs = s2n
    client = certs.client(common_name=CLIENT_NAME)
    port = tmp_path / "ttyT1"
    vcom.add(port, f"rfc2217+tls://127.0.0.1:{server.auth_port}", "--tls-ca", str(certs.ca_file),
             "--tls-cert", str(client.cert), "--tls-key", str(client.key))
    fd = open_port(port)
    handshake(fd, device)
    stty(port, "57600")
    wait_settings(device, baud=57600)
    handshake(fd, device)
    assert vcom.status(port)["tls"]["client_cert"] == str(client.cert)


def test_ser2net_refuses_a_port_without_client_certificate(vcom: Vcom, s2n, device: PtyDevice, open_port,
                                                          tmp_path: Path) -> None:
    server, certs = s2n
    port = tmp_path / "ttyT2"
    vcom.add(port, f"rfc2217+tls://127.0.0.1:{server.auth_port}", "--tls-ca", str(certs.ca_file), "--connect",
             "always")
    fd = open_port(port)
    status = wait_query(vcom, port, lambda s: "client certificate" in (s["last_error"] or ""),
                        "the refusal in last_error")
    assert "\n" not in status["last_error"] and status["state"] != "connected"
    os.write(fd, b"must not arrive")
    # Two more attempts in which the bytes could have gone out: none reached the UART.
    wait_query(vcom, port, lambda s: s["connects"] >= status["connects"] + 2, "two more attempts")
    assert device.drain() == b""
    assert f"{port}: connection to" in vcom.log_tail() and "client certificate" in vcom.log_tail()


def test_raw_tcp_over_tls_to_ser2net(vcom: Vcom, s2n, device: PtyDevice, open_port, tmp_path: Path) -> None:
    server, certs = s2n
    port = tmp_path / "ttyT3"
    vcom.add(port, f"tcp+tls://localhost:{server.raw_port}", "--tls-ca", str(certs.ca_file))
    fd = open_port(port)
    handshake(fd, device)
    status = vcom.status(port)
    assert status["tls"]["server_name"] == "localhost" and status["target"].startswith("tcp+tls://")
