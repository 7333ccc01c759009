"""IPv6 end to end: ``vcom share --listen [::]:PORT`` and ``vcom add DEVICE [::1]:PORT``,
RFC 2217 and UDP, through the CLI, with the data echoed by ``sim:echo``."""

from __future__ import annotations

from pathlib import Path

from peers import Vcom, bound_addresses, read_exact, stty, write_all


def test_rfc2217_over_ipv6(vcom: Vcom, open_port, tmp_path: Path):
    listen = vcom.share("sim:echo", host="::")
    # The share listens on the IPv6 wildcard (the manager holds the socket).
    assert ("::", listen) in bound_addresses(vcom.manager_pid())
    port = tmp_path / "ttyV6"
    vcom.add(port, f"[::1]:{listen}", "--baud", "115200")
    fd = open_port(port)
    stty(port, "115200")
    message = bytes(range(256)) * 8
    write_all(fd, message)
    assert read_exact(fd, len(message)) == message

    status = vcom.wait_status(port, lambda s: s["remote_settings"]["baud"] == 115200, what="115200 acknowledged")
    assert status["target"] == f"rfc2217://[::1]:{listen}"
    assert status["com_port"] is True
    shared = vcom.status("sim:echo")
    assert shared["listen"] == f"[::]:{listen}"
    (client,) = shared["clients"]
    assert client["peer"].startswith("[::1]:")
    assert f"{port}  rfc2217://[::1]:{listen}  " in vcom.ok("list").stdout


def test_list_shows_an_ipv6_share_in_brackets(vcom: Vcom):
    port = vcom.share("sim:echo", host="::")
    (line,) = [line for line in vcom.ok("list").stdout.splitlines() if line.startswith("share sim:echo")]
    # The listen address in the form --listen takes; port 0 was kept as the port the kernel picked.
    assert line.endswith(f" on [::]:{port}"), line


def test_udp_over_ipv6(vcom: Vcom, open_port, tmp_path: Path):
    listen = vcom.share("sim:echo", "--protocol", "udp", host="::1")
    port = tmp_path / "ttyU6"
    vcom.add(port, f"udp://[::1]:{listen}", "--baud", "115200")
    fd = open_port(port)
    stty(port, "115200")
    vcom.wait_status(port, lambda s: s["state"] == "connected", what="the UDP link up")
    write_all(fd, b"datagrams over v6")
    assert read_exact(fd, 17) == b"datagrams over v6"
    assert vcom.status(port)["target"] == f"udp://[::1]:{listen}"
    assert vcom.status("sim:echo")["clients"][0]["peer"].startswith("[::1]:")
