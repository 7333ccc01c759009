"""``vcom share`` over TLS, with clients that are not vcom (``openssl s_client``, ``socat openssl:``) and with
vcom's own ports; mutual TLS; certificates read again on ``vcom reload`` and SIGHUP without dropping
anyone; the share's options in the config file and in the unit's environment file (``--foreground``).

The shared device is a pty whose master the test holds: what a client sends must come out there, what the
test writes there must reach the client.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from peers import (
    PtyDevice,
    Vcom,
    free_port,
    handshake,
    read_until,
    shared_port,
    stty,
    wait_settings,
    wait_until,
)
from tls_peers import Certs, OpenSslClient, listening, need, query, run_ok, wait_query


def tls_share(vcom: Vcom, device: str, certs: Certs, *options: str, protocol: str = "tcp",
              label: str = "server") -> int:
    pair = certs.server(label)
    return shared_port(vcom.ok("share", device, "--listen", "127.0.0.1:0", "--protocol", protocol,
                               "--tls-cert", str(pair.cert), "--tls-key", str(pair.key), *options))


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return Certs(tmp_path / "pki")


def test_openssl_s_client_both_ways(vcom: Vcom, device: PtyDevice, certs: Certs, tmp_path: Path, start_peer) -> None:
    need("openssl")
    port = tls_share(vcom, device.path, certs)
    client = start_peer(OpenSslClient(tmp_path, port, certs.ca_file))
    client.send(b"to-the-device\n")
    device.read_until(b"to-the-device\n")
    device.write(b"to-the-client\n")
    client.wait_for(b"to-the-client\n")
    status = vcom.status(device.path)
    assert status["tls"]["client_auth"] is False
    assert [c["tls"]["version"] for c in status["clients"]] in (["TLSv1.3"], ["TLSv1.2"])


def test_socat_openssl_client_both_ways(vcom: Vcom, device: PtyDevice, certs: Certs) -> None:
    need("socat")
    port = tls_share(vcom, device.path, certs)
    proc = subprocess.Popen(["socat", "-", f"OPENSSL:127.0.0.1:{port},cafile={certs.ca_file},verify=1"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"socat-says\n")
        proc.stdin.flush()
        device.read_until(b"socat-says\n")
        device.write(b"device-says\n")
        os.set_blocking(proc.stdout.fileno(), False)
        read_until(proc.stdout.fileno(), b"device-says\n")
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_mutual_tls_admits_only_certificates_of_the_client_ca(vcom: Vcom, device: PtyDevice, certs: Certs,
                                                              tmp_path: Path, start_peer) -> None:
    need("openssl")
    clients = Certs(tmp_path / "clients-pki", "clients")
    port = tls_share(vcom, device.path, certs, "--tls-client-ca", str(clients.ca_file))

    stranger = start_peer(OpenSslClient(tmp_path, port, certs.ca_file))  # no certificate at all
    stranger.send(b"from-the-stranger\n", may_be_refused=True)
    wait_query(vcom, device.path, lambda s: s["tls_failures"] >= 1, "the stranger refused")
    other = Certs(tmp_path / "other-pki", "other")  # a certificate, from a CA the share does not trust
    impostor = start_peer(OpenSslClient(tmp_path, port, certs.ca_file, other.client()))
    impostor.send(b"from-the-impostor\n", may_be_refused=True)
    status = wait_query(vcom, device.path, lambda s: s["tls_failures"] >= 2, "the impostor refused")
    assert "not signed by --tls-client-ca" in status["last_refusal"]

    friend = start_peer(OpenSslClient(tmp_path, port, certs.ca_file, clients.client(common_name="plc-7")))
    friend.send(b"from-the-friend\n")
    got = device.read_until(b"from-the-friend\n")
    assert b"stranger" not in got and b"impostor" not in got  # nothing of the refused ones reached the UART
    device.write(b"welcome\n")
    friend.wait_for(b"welcome\n")
    assert b"welcome" not in stranger.received() + impostor.received()
    [client] = vcom.status(device.path)["clients"]
    assert "CN=plc-7" in client["tls"]["peer"]["subject"]


def test_vcom_port_to_vcom_share_rfc2217_over_mutual_tls(vcom: Vcom, device: PtyDevice, certs: Certs, open_port,
                                                         tmp_path: Path) -> None:
    client = certs.client()
    port = tls_share(vcom, device.path, certs, "--tls-client-ca", str(certs.ca_file), protocol="rfc2217")
    tty = tmp_path / "ttyS0"
    vcom.add(tty, f"rfc2217+tls://localhost:{port}", "--tls-ca", str(certs.ca_file), "--tls-cert", str(client.cert),
             "--tls-key", str(client.key))
    fd = open_port(tty)
    handshake(fd, device)
    stty(tty, "38400", "cstopb")
    wait_settings(device, baud=38400, cstopb=True)
    handshake(fd, device)
    shared = vcom.status(device.path)
    assert shared["settings"]["baud"] == 38400 and "CN=vcom-client" in shared["clients"][0]["tls"]["peer"]["subject"]


def test_data_is_encrypted_on_the_wire(vcom: Vcom, device: PtyDevice, certs: Certs, open_port, tmp_path: Path,
                                       start_peer) -> None:
    from peers import WireProxy

    port = tls_share(vcom, device.path, certs)
    proxy = start_peer(WireProxy(tmp_path / "proxy", port))
    tty = tmp_path / "ttyE0"
    vcom.add(tty, f"tcp+tls://127.0.0.1:{proxy.port}", "--tls-ca", str(certs.ca_file), "--tls-server-name",
             "localhost")
    fd = open_port(tty)
    secret = b"the-secret-recipe-" * 4
    os.write(fd, secret)
    device.read_until(secret)
    device.write(secret[::-1])
    read_until(fd, secret[::-1])
    assert secret not in proxy.stream("c2s") and secret[::-1] not in proxy.stream("s2c")
    assert proxy.stream("c2s")[:1] == b"\x16"  # a TLS handshake record came first


def test_reload_and_sighup_swap_certificates_without_dropping_anyone(vcom: Vcom, device: PtyDevice, certs: Certs,
                                                                     open_port, tmp_path: Path,
                                                                     start_peer) -> None:
    need("openssl")
    first = certs.issue("first", "127.0.0.1", common_name="first")
    port = shared_port(vcom.ok("share", device.path, "--listen", "127.0.0.1:0", "--protocol", "tcp",
                               "--tls-cert", str(first.cert), "--tls-key", str(first.key)))
    tty = tmp_path / "ttyR0"
    vcom.add(tty, f"tcp+tls://127.0.0.1:{port}", "--tls-ca", str(certs.ca_file), "--connect", "always")
    fd = open_port(tty)
    handshake(fd, device)
    early = start_peer(OpenSslClient(tmp_path, port, certs.ca_file))
    early.send(b"early\n")
    device.read_until(b"early\n")

    def subject_seen_by_a_new_client() -> str:
        result = run_ok("openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(certs.ca_file),
                        "-verify_return_error", "-brief", stdin=b"")
        return result.stdout.decode() + result.stderr.decode()

    assert "first" in subject_seen_by_a_new_client()

    second = certs.issue("second", "127.0.0.1", common_name="second")
    os.replace(second.cert, first.cert)
    os.replace(second.key, first.key)
    reloaded = vcom.ok("reload")
    assert "1 share(s)" in reloaded.stdout
    assert "second" in subject_seen_by_a_new_client()

    # A broken file: refused in one line, the certificate read before stays in use.
    good_key = first.key.read_bytes()
    first.key.write_bytes(b"not a key\n")
    broken = vcom.cli("reload")
    assert broken.returncode == 1 and broken.stderr.count("\n") == 1 and "no PEM private key" in broken.stderr
    assert "reload failed" in vcom.status(device.path)["tls"]["error"]
    assert "second" in subject_seen_by_a_new_client()
    first.key.write_bytes(good_key)

    third = certs.issue("third", "127.0.0.1", common_name="third")
    os.replace(third.cert, first.cert)
    os.replace(third.key, first.key)
    manager = int((vcom.home / "vcom.pid").read_text())
    os.kill(manager, signal.SIGHUP)
    wait_until(lambda: "third" in subject_seen_by_a_new_client(), 10, "the third certificate after SIGHUP")
    assert vcom.status(device.path)["tls"]["error"] is None

    # Everyone connected before is still connected, both ways.
    handshake(fd, device)
    early.send(b"still-here\n")
    device.read_until(b"still-here\n")
    device.write(b"back-to-all\n")
    early.wait_for(b"back-to-all\n")
    status = vcom.status(tty)
    assert (status["state"], status["connects"], status["reconnects"]) == ("connected", 1, 0)


def test_share_options_in_the_config_file(vcom: Vcom, device: PtyDevice, certs: Certs, tmp_path: Path,
                                          start_peer) -> None:
    need("openssl")
    pair = certs.server()
    port = free_port()
    (vcom.home / "vcom.toml").write_text(
        "[[share]]\n"
        f'device = "{device.path}"\n'
        'listen_host = "127.0.0.1"\n'
        f"listen_port = {port}\n"
        'protocol = "tcp"\n'
        f'tls_cert = "{pair.cert}"\n'
        f'tls_key = "{pair.key}"\n'
        f'tls_client_ca = "{certs.ca_file}"\n'
        'allow = ["127.0.0.0/8", "::1"]\n')
    vcom.ok("share", "sim:echo", "--listen", "127.0.0.1:0")  # starts the manager, which reads the file
    wait_until(lambda: listening(port), 15, "the configured share")
    client = start_peer(OpenSslClient(tmp_path, port, certs.ca_file, certs.client()))
    client.send(b"from-config\n")
    device.read_until(b"from-config\n")
    status = query(vcom, device.path)
    assert status["allow"] == ["127.0.0.0/8", "::1/128"] and status["tls"]["client_auth"] is True
    listed = vcom.ok("list").stdout
    assert "over TLS (client certificates)  allow 127.0.0.0/8,::1" in listed


def test_foreground_share_with_the_unit_environment_file(device: PtyDevice, certs: Certs, tmp_path: Path,
                                                         start_peer) -> None:
    """What vcom-share@.service runs: `vcom share DEV --foreground $VCOM_SHARE_ARGS`, the variable from
    /etc/vcom/share-NAME.env, split on whitespace as systemd does; SIGHUP is `systemctl reload`."""
    need("openssl")
    pair = certs.server()
    port = free_port()
    env_file = tmp_path / "share-ttyX.env"
    env_file.write_text(f'VCOM_SHARE_ARGS="--listen 127.0.0.1:{port} --protocol tcp --tls-cert {pair.cert} '
                        f'--tls-key {pair.key} --allow 127.0.0.1"\n')
    args = shlex.split(env_file.read_text().split("=", 1)[1])[0].split()
    log = tmp_path / "share.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vcom", "share", device.path, "--foreground", *args],
                                stdout=out, stderr=out, env={**os.environ, "VCOM_HOME": str(tmp_path / "h")})
    try:
        wait_until(lambda: listening(port), 15, "the foreground share")
        client = start_peer(OpenSslClient(tmp_path, port, certs.ca_file))
        client.send(b"via-unit\n")
        device.read_until(b"via-unit\n")
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: b"TLS files read again" in log.read_bytes(), 10, "the reload in the log")
        assert proc.poll() is None
        device.write(b"after-hup\n")
        client.wait_for(b"after-hup\n")
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0, log.read_text()
    assert b"Traceback" not in log.read_bytes()


def test_expiring_certificates_are_warned_about(vcom: Vcom, device: PtyDevice, certs: Certs, open_port,
                                                tmp_path: Path) -> None:
    """Both roles: the share about its own certificate, the port about the server's.  (Once a day, not at
    every connection: tests/test_tls_units.py, with a clock the test turns.)"""
    from tls_peers import days

    soon = certs.issue("soon", "127.0.0.1", common_name="soon", not_after=days(5))
    port = shared_port(vcom.ok("share", device.path, "--listen", "127.0.0.1:0", "--protocol", "tcp",
                               "--tls-cert", str(soon.cert), "--tls-key", str(soon.key)))
    tty = tmp_path / "ttyX0"
    vcom.add(tty, f"tcp+tls://127.0.0.1:{port}", "--tls-ca", str(certs.ca_file))
    fd = open_port(tty)
    handshake(fd, device)
    warning = vcom.status(tty)["tls"]["warning"]
    assert "the server's certificate (" in warning and "CN=soon" in warning
    assert "expires in 4.9 days" in warning or "expires in 5.0 days" in warning
    assert "expires in" in vcom.status(device.path)["tls"]["warning"]
    log = vcom.log_tail(400)
    assert log.count("the server's certificate (") == 1 and log.count("its certificate (") == 1
    text = vcom.ok("status", str(tty)).stdout
    assert "tls warning: " in text and "expires in" in text


def test_insecure_port_connects_to_anyone_and_says_so(vcom: Vcom, device: PtyDevice, certs: Certs, open_port,
                                                      tmp_path: Path) -> None:
    stranger = Certs(tmp_path / "self-made", "self-made")  # a CA nobody told the port about
    port = tls_share(vcom, device.path, stranger)
    tty = tmp_path / "ttyI0"
    vcom.add(tty, f"tcp+tls://127.0.0.1:{port}", "--tls-insecure")
    fd = open_port(tty)
    handshake(fd, device)
    tls = vcom.status(tty)["tls"]
    assert (tls["verify"], tls["insecure"], tls["ca"]) == (False, True, None)
    assert tls["peer"]["issuer"].startswith("O=vcom test self-made")  # still shown, read without verifying
    assert "NOT VERIFIED (--tls-insecure)" in vcom.ok("status", str(tty)).stdout
