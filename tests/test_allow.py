"""``--allow CIDR``: who may connect to a share, for raw TCP, RFC 2217, TLS and UDP shares.

Every address of 127.0.0.0/8 is this machine, so a client that binds its socket to 127.0.0.2 before
connecting comes from another address than one from 127.0.0.1: one share can be tried from an allowed
and from a refused address without leaving loopback.  The device is a pty the test holds; a refused
client's bytes must never come out there.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
from peers import PtyDevice, Vcom, read_exact
from tls_peers import Certs, wait_query

from vcom.access import AccessError, AllowList, is_loopback, parse_network
from vcom.config import ShareConfig, ShareError

ALLOWED, REFUSED = "127.0.0.2", "127.0.0.3"


def connect_from(source: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def closed_without_a_word(sock: socket.socket) -> bool:
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def share(vcom: Vcom, device: str, *options: str) -> int:
    return vcom.share(device, *options)


def test_raw_and_rfc2217_shares_admit_only_allowed_addresses(vcom: Vcom, device: PtyDevice, make_device) -> None:
    raw = share(vcom, device.path, "--protocol", "tcp", "--allow", f"{ALLOWED}/32", "--allow", "10.9.0.0/16")
    telnet_device = make_device()
    telnet = share(vcom, telnet_device.path, "--allow", ALLOWED)

    refused = connect_from(REFUSED, raw)
    refused.sendall(b"refused-bytes")
    assert closed_without_a_word(refused)
    refused.close()
    friend = connect_from(ALLOWED, raw)
    friend.sendall(b"friend-bytes")
    assert device.read_until(b"friend-bytes") == b"friend-bytes"  # nothing of the refused one came first
    device.write(b"to-friend")
    assert friend.recv(100) == b"to-friend"
    friend.close()

    stranger = connect_from(REFUSED, telnet)
    assert closed_without_a_word(stranger)  # not even the telnet negotiation
    stranger.close()
    welcome = connect_from(ALLOWED, telnet)
    assert welcome.recv(3)[:1] == b"\xff"  # IAC: the RFC 2217 server speaks to an allowed client
    welcome.close()

    status = vcom.status(device.path)
    assert status["allow"] == [f"{ALLOWED}/32", "10.9.0.0/16"] and status["denied_clients"] == 1
    assert status["last_refusal"].startswith(f"{REFUSED}:") and status["last_refusal"].endswith("not in --allow")
    assert vcom.status(telnet_device.path)["denied_clients"] == 1
    assert f"refused {REFUSED}:" in vcom.log_tail()


def test_tls_share_checks_the_address_before_the_handshake(vcom: Vcom, device: PtyDevice, tmp_path: Path) -> None:
    certs = Certs(tmp_path / "pki")
    pair = certs.server()
    port = share(vcom, device.path, "--protocol", "tcp", "--tls-cert", str(pair.cert), "--tls-key", str(pair.key),
                 "--allow", "127.0.0.2/31")
    context = ssl.create_default_context(cafile=str(certs.ca_file))
    with connect_from("127.0.0.4", port) as raw, pytest.raises((ssl.SSLError, ConnectionError)):
        context.wrap_socket(raw, server_hostname="127.0.0.1").sendall(b"x")
    with context.wrap_socket(connect_from("127.0.0.3", port), server_hostname="127.0.0.1") as ok:
        ok.sendall(b"over-tls")
        assert device.read_until(b"over-tls") == b"over-tls"
    status = vcom.status(device.path)
    assert (status["denied_clients"], status["tls_failures"]) == (1, 0)  # refused before any TLS was spoken


def test_udp_share_ignores_other_addresses(vcom: Vcom, device: PtyDevice) -> None:
    port = share(vcom, device.path, "--protocol", "udp", "--allow", ALLOWED)
    for source, payload in ((REFUSED, b"refused-datagram"), (ALLOWED, b"allowed-datagram")):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((source, 0))
            sock.sendto(payload, ("127.0.0.1", port))
    assert read_exact(device.master, len(b"allowed-datagram")) == b"allowed-datagram"
    wait_query(vcom, device.path, lambda s: s["denied_clients"] == 1, "the refused datagram counted")


def test_one_warning_for_an_open_share(vcom: Vcom, device: PtyDevice, make_device) -> None:
    result = vcom.ok("share", device.path, "--listen", "0.0.0.0:0", "--protocol", "tcp")
    assert result.stderr.count("\n") == 1 and "neither --tls-client-ca nor --allow" in result.stderr
    assert vcom.log_tail().count("neither --tls-client-ca nor --allow") == 1
    quiet = [vcom.ok("share", make_device().path, "--listen", "0.0.0.0:0", "--allow", "192.0.2.0/24"),
             vcom.ok("share", make_device().path, "--listen", "127.0.0.1:0")]
    assert [r.stderr for r in quiet] == ["", ""]


# -- the parts --------------------------------------------------------------------------------------------------


def test_allow_list_matches_addresses_and_mapped_ipv4() -> None:
    allow = AllowList(["192.0.2.0/24", "2001:db8::/32", "10.0.0.7"])
    assert allow.allows(("192.0.2.55", 1000))
    assert allow.allows(("::ffff:192.0.2.1", 1000, 0, 0))  # IPv4 client of a [::] listener
    assert allow.allows(("2001:db8::1%eth0", 1, 0, 2))
    assert allow.allows("10.0.0.7") and not allow.allows("10.0.0.8")
    assert not allow.allows(("198.51.100.1", 1)) and not allow.allows("not an address")
    assert AllowList().allows(("198.51.100.1", 1))  # no list: everyone


@pytest.mark.parametrize("text", ["10.0.0.300", "host.example", "", "10.0.0.1/8", "::1/200"])
def test_bad_allow_entries_are_refused(text: str) -> None:
    with pytest.raises(AccessError):
        parse_network(text)
    with pytest.raises(ShareError) as info:
        ShareConfig(device="sim:echo", allow=(text,))
    assert str(info.value).startswith("allow ") and "\n" not in str(info.value)


def test_which_listen_addresses_are_loopback() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.8.0.1", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.0.2.1", "plc.example"]))
