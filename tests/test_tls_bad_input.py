"""Everything that can go wrong with TLS gives one line in status and in the log, and nothing else: no
crash, no traceback, no serial byte before the handshake and its verification succeeded.

Client role: vcom ports (``--connect always``) to shares whose certificates are wrong in each way, all in
one manager.  Server role: a vcom share with mutual TLS, and clients that are not vcom (``openssl
s_client``, ``socat``) that are wrong in each way; the UART behind the share must hear nothing from them.
Handshakes that never finish are bounded in both roles (in one process, with the bound shortened).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
from pathlib import Path

from peers import PtyDevice, Vcom, handshake
from tls_peers import Certs, OpenSslClient, days, need, query, wait_query

from vcom.link import Link
from vcom.share import Share, ShareConfig
from vcom.share import limits as share_limits
from vcom.target import parse_target


def share_with(vcom: Vcom, device: str, *options: str) -> int:
    return vcom.share(device, "--protocol", "tcp", *options)


def test_client_role_every_bad_server_is_one_line(vcom: Vcom, tmp_path: Path, make_device) -> None:
    certs = Certs(tmp_path / "pki")
    other = Certs(tmp_path / "other", "other")

    def tls_share(pair, *options: str) -> int:
        return share_with(vcom, make_device().path, "--tls-cert", str(pair.cert), "--tls-key", str(pair.key), *options)

    wrong_ca = tls_share(other.server())
    expired = tls_share(certs.server("old", not_before=days(-30), not_after=days(-1)))
    not_yet = tls_share(certs.server("new", not_before=days(2), not_after=days(30)))
    mutual = tls_share(certs.server("mtls"), "--tls-client-ca", str(certs.ca_file))
    plain = vcom.share(make_device().path)  # RFC 2217, no TLS
    stranger = other.client()
    ca = ("--tls-ca", str(certs.ca_file))
    cases = {
        "wrong-ca": (f"tcp+tls://127.0.0.1:{wrong_ca}", ca, "not signed by a trusted CA"),
        "expired": (f"tcp+tls://127.0.0.1:{expired}", ca, "certificate has expired"),
        "not-yet": (f"tcp+tls://127.0.0.1:{not_yet}", ca, "is not valid yet"),
        "name": (f"tcp+tls://127.0.0.1:{wrong_ca}", ("--tls-ca", str(other.ca_file), "--tls-server-name",
                                                     "plc.example"), "not for 'plc.example'"),
        "plain-server": (f"rfc2217+tls://127.0.0.1:{plain}", ca, "does not speak TLS"),
        "no-client-cert": (f"tcp+tls://127.0.0.1:{mutual}", ca, "require a client certificate"),
        "foreign-client-cert": (f"tcp+tls://127.0.0.1:{mutual}",
                                (*ca, "--tls-cert", str(stranger.cert), "--tls-key", str(stranger.key)),
                                "client certificate"),
    }
    for name, (target, options, _) in cases.items():
        vcom.add(tmp_path / f"tty-{name}", target, *options, "--connect", "always")

    def reasons() -> dict[str, str]:
        return {name: query(vcom, tmp_path / f"tty-{name}")["last_error"] or "" for name in cases}

    def all_told() -> dict[str, str] | None:
        now = reasons()
        return now if all(cases[name][2] in error for name, error in now.items()) else None

    try:
        errors = vcom.wait_for(all_told, 20, "every port's reason")
    except AssertionError:
        raise AssertionError(f"reasons: {reasons()}") from None
    log = vcom.log_tail(2000)
    for name, error in errors.items():
        assert "\n" not in error and "_ssl.c" not in error and "[SSL" not in error, error
        assert log.count(error) >= 1, f"{name}: {error!r} not in the log"
    ports = vcom.ports()
    assert all(p["state"] != "connected" and p["bytes_to_remote"] == 0 for p in ports), ports
    assert "Traceback" not in log
    mismatched = vcom.cli("add", str(tmp_path / "tty-mismatch"), f"tcp+tls://127.0.0.1:{mutual}",
                          "--tls-cert", str(stranger.cert), "--tls-key", str(certs.client("other").key))
    assert mismatched.returncode == 1 and mismatched.stderr.startswith("vcom: --tls-key ")
    assert "is not the key of the certificate" in mismatched.stderr and mismatched.stderr.count("\n") == 1


def test_server_role_every_bad_client_is_one_line(vcom: Vcom, device: PtyDevice, tmp_path: Path, start_peer,
                                                  open_port) -> None:
    need("openssl", "socat")
    certs = Certs(tmp_path / "pki")
    other = Certs(tmp_path / "other", "other")
    pair = certs.server()
    port = share_with(vcom, device.path, "--tls-cert", str(pair.cert), "--tls-key", str(pair.key),
                      "--tls-client-ca", str(certs.ca_file))
    expired = certs.issue("expired", "old-client", common_name="old-client", not_before=days(-30),
                          not_after=days(-1))
    clients = [
        ("does not speak TLS", lambda: subprocess.run(["socat", "-", f"TCP:127.0.0.1:{port}"], input=b"plain-bytes\n",
                                                      capture_output=True, timeout=10)),
        ("presented no certificate", lambda: start_peer(OpenSslClient(tmp_path, port, certs.ca_file))),
        ("not signed by --tls-client-ca",
         lambda: start_peer(OpenSslClient(tmp_path, port, certs.ca_file, other.client()))),
        ("client's certificate has expired", lambda: start_peer(OpenSslClient(tmp_path, port, certs.ca_file, expired))),
        ("refused this share's certificate", lambda: start_peer(OpenSslClient(tmp_path, port, other.ca_file,
                                                                              certs.client()))),
    ]
    seen: list[str] = []

    def refused() -> dict | None:
        status = query(vcom, device.path)
        return status if status["tls_failures"] > len(seen) else None

    for expected, connect in clients:
        peer = connect()
        if isinstance(peer, OpenSslClient):
            peer.send(b"from-a-refused-client\n", may_be_refused=True)
        status = vcom.wait_for(refused, what=f"the share to refuse a client that {expected}")
        assert expected in status["last_refusal"], status["last_refusal"]
        assert "\n" not in status["last_refusal"] and "_ssl.c" not in status["last_refusal"]
        assert status["clients"] == []
        seen.append(status["last_refusal"])
    # A good client still gets in, and is the first to reach the UART.
    tty = tmp_path / "ttyG0"
    good = certs.client("good")
    vcom.add(tty, f"tcp+tls://127.0.0.1:{port}", "--tls-ca", str(certs.ca_file), "--tls-cert", str(good.cert),
             "--tls-key", str(good.key))
    fd = open_port(tty)
    os.write(fd, b"first-good-bytes")
    assert device.read_until(b"first-good-bytes").startswith(b"first-good-bytes")
    handshake(fd, device)
    log = vcom.log_tail(2000)
    assert all(line in log for line in seen) and "Traceback" not in log


def test_plain_port_to_a_tls_share_and_back(vcom: Vcom, device: PtyDevice, tmp_path: Path, open_port) -> None:
    """The reverse of a TLS client to a plain server: a plain RFC 2217 port to a TLS share."""
    certs = Certs(tmp_path / "pki")
    pair = certs.server()
    port = share_with(vcom, device.path, "--tls-cert", str(pair.cert), "--tls-key", str(pair.key))
    tty = tmp_path / "ttyP0"
    vcom.add(tty, f"rfc2217://127.0.0.1:{port}", "--connect", "always")
    fd = open_port(tty)
    os.write(fd, b"plain-into-tls")
    status = wait_query(vcom, device.path, lambda s: s["tls_failures"] >= 1, "the refusal")
    assert "does not speak TLS" in status["last_refusal"]
    port_status = wait_query(vcom, tty, lambda s: s["last_error"], "the port's reason")
    assert "lost" in port_status["last_error"] or "no answer" in port_status["last_error"]
    assert device.drain() == b""


# -- handshakes that never finish (one process, the bound shortened) --------------------------------------------


class _Listener:
    def __init__(self) -> None:
        self.changes = asyncio.Event()

    def link_data(self, data: bytes) -> None:
        raise AssertionError(f"data from a server that never finished its handshake: {data!r}")

    def link_writable(self, writable: bool) -> None:
        assert not writable, "writable before the handshake finished"

    def link_changed(self) -> None:
        self.changes.set()


def test_client_handshake_is_bounded(tmp_path: Path) -> None:
    async def main() -> str | None:
        accepted: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)  # takes the ClientHello and answers nothing, ever
            await reader.read()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        link = Link(parse_target(f"tcp+tls://127.0.0.1:{port}"), _Listener(), name="bounded",
                    tls_handshake_timeout=0.3)
        link.start()
        try:
            for _ in range(100):
                await asyncio.sleep(0.05)
                if link.stats.last_error:
                    break
            assert link.state.value in ("connecting", "backoff") and link.status()["tls"]["version"] is None
            return link.stats.last_error
        finally:
            await link.stop()
            for writer in accepted:
                writer.close()
            server.close()

    error = asyncio.run(main())
    assert error is not None and error.startswith("connect to tcp+tls://127.0.0.1:")
    assert error.endswith(": TLS: the TLS handshake did not finish within 0.3 s")


def test_share_handshake_is_bounded_and_the_share_carries_on(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(share_limits, "TLS_HANDSHAKE_TIMEOUT", 0.3)
    certs = Certs(tmp_path / "pki")
    pair = certs.server()

    async def main() -> tuple[dict, bytes]:
        share = Share(ShareConfig(device="sim:echo", protocol="tcp", tls_cert=str(pair.cert), tls_key=str(pair.key)))
        await share.start()
        loop = asyncio.get_running_loop()
        try:
            silent = socket.create_connection(("127.0.0.1", share.port))
            silent.setblocking(False)
            for _ in range(100):
                await asyncio.sleep(0.05)
                if share.status()["tls_failures"]:
                    break
            status = share.status()
            assert await loop.sock_recv(silent, 100) == b""  # closed by the share, nothing said
            silent.close()
            context = ssl.create_default_context(cafile=str(certs.ca_file))
            reader, writer = await asyncio.open_connection("127.0.0.1", share.port, ssl=context)
            writer.write(b"echo me")
            echoed = await asyncio.wait_for(reader.readexactly(7), 10)
            writer.close()
            return status, echoed
        finally:
            await share.close()

    status, echoed = asyncio.run(main())
    assert status["tls_failures"] == 1 and status["clients"] == []
    assert status["last_refusal"].endswith("TLS: the TLS handshake did not finish within 0.3 s")
    assert echoed == b"echo me"


def test_raw_port_holds_its_bytes_while_a_tls13_server_may_still_refuse_it(vcom: Vcom, device: PtyDevice,
                                                                          tmp_path: Path, open_port) -> None:
    """TLS 1.3: the client's handshake is over before the server has looked at the client's certificate.  A
    raw port must not hand the program's bytes to a server that is about to refuse it: they stay with the
    port (the program's write still succeeded, the pty holds them), none is counted as sent."""
    certs = Certs(tmp_path / "pki")
    pair = certs.server()
    port = share_with(vcom, device.path, "--tls-cert", str(pair.cert), "--tls-key", str(pair.key),
                      "--tls-client-ca", str(certs.ca_file))
    tty = tmp_path / "ttyH0"
    vcom.add(tty, f"tcp+tls://127.0.0.1:{port}", "--tls-ca", str(certs.ca_file), "--retry-max", "0.5")
    fd = open_port(tty)
    os.write(fd, b"held-back")
    first = wait_query(vcom, tty, lambda s: s["connects"] >= 1 and s["last_error"], "the first refusal")
    wait_query(vcom, tty, lambda s: s["connects"] >= first["connects"] + 3, "three more attempts")
    status = vcom.status(tty)
    assert status["bytes_to_remote"] == 0, status
    assert "client certificate" in status["last_error"]
    assert vcom.status(device.path)["tls_failures"] >= 4 and device.drain() == b""
