"""Bad input and bad peers: what a user can get wrong, and what a network can do.

A mistake on the command line must be one clear line and leave nothing
behind.  A server that is absent, rude or mute must never make a program's
port fail (no EIO: a real serial port does not vanish because a cable is
unplugged) and must never take the manager, or its other ports, down with it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import termios
from pathlib import Path

import pytest
from peers import (
    HostileServer,
    PtyDevice,
    Ser2net,
    Stream,
    Vcom,
    handshake,
    poke,
    pump,
    wait_until,
)


def assert_refused(vcom: Vcom, result: subprocess.CompletedProcess[str], device: Path) -> None:
    """Exit status, one line on stderr, no traceback, nothing created."""
    assert result.returncode != 0, f"accepted: stdout {result.stdout!r} stderr {result.stderr!r}"
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {result.stderr!r}"
    assert not os.path.lexists(device)
    assert not vcom.manager_pids(), "a refused command must not start a manager"


@pytest.mark.parametrize("target", ["nohost", "host:", "host:99999", "ftp://h:1", "::1:4001", "[::1", "a b:1"])
def test_malformed_target_is_refused(vcom: Vcom, tmp_path, target):
    device = tmp_path / "ttyV0"
    assert_refused(vcom, vcom.cli("add", str(device), target), device)


@pytest.mark.parametrize(
    "flags",
    [["--connect", "sometimes"], ["--baud", "-5"], ["--linger", "x"]],
    ids=["connect", "baud", "linger"],
)
def test_bad_flag_is_refused(vcom: Vcom, tmp_path, flags):
    device = tmp_path / "ttyV0"
    assert_refused(vcom, vcom.cli("add", str(device), "127.0.0.1:4001", *flags), device)


def test_device_path_that_is_a_regular_file_is_refused(vcom: Vcom, tmp_path):
    device = tmp_path / "notes.txt"
    device.write_text("keep me\n")
    result = vcom.cli("add", str(device), "127.0.0.1:4001")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not device.is_symlink()
    assert device.read_text() == "keep me\n"
    assert not vcom.manager_pids()


def test_device_path_in_a_missing_directory_is_refused(vcom: Vcom, tmp_path):
    device = tmp_path / "missing" / "ttyV0"
    assert_refused(vcom, vcom.cli("add", str(device), "127.0.0.1:4001"), device)
    assert not device.parent.exists()


def test_unreachable_target_never_fails_the_program(vcom: Vcom, open_port, refused_port, tmp_path):
    device = tmp_path / "ttyV0"
    vcom.add(device, f"127.0.0.1:{refused_port}")
    fd = open_port(device)
    os.write(fd, b"hello, is anybody there?")

    status = vcom.wait_status(
        device, lambda s: s["state"] in ("backoff", "connecting") and s["last_error"], what="a failed connect"
    )
    assert status["open"] is True
    assert isinstance(status["last_error"], str)
    # Keep writing past what the pty can hold: the program may see EAGAIN, never EIO.
    for _ in range(64):
        poke(fd)
        with contextlib.suppress(BlockingIOError):
            os.write(fd, b"x" * 4096)
    termios.tcgetattr(fd)  # still a working tty
    status = vcom.status(device)
    assert status["state"] in ("backoff", "connecting")
    assert status["connects"] == 0


@pytest.mark.parametrize("mode", HostileServer.MODES)
def test_hostile_server_hurts_neither_the_program_nor_other_ports(
    mode, vcom: Vcom, ser2net: Ser2net, device: PtyDevice, start_peer, open_port, tmp_path
):
    hostile = start_peer(HostileServer(tmp_path / "hostile", mode))
    bad_port, good_port = tmp_path / "ttyBad", tmp_path / "ttyGood"
    vcom.add(bad_port, f"127.0.0.1:{hostile.port}")
    vcom.add(good_port, f"127.0.0.1:{ser2net.port}")
    bad = open_port(bad_port)
    good = open_port(good_port)

    poke(bad)
    wait_until(lambda: hostile.connections() >= 1, 15, f"vcom to reach the {mode} server")
    if mode == "close":
        # Being hung up on again and again is a connection failure, reported as one.
        vcom.wait_status(bad_port, lambda s: s["last_error"], what="the hang-up reported")

    handshake(good, device)
    streams = [
        Stream(good, device.master, os.urandom(32 * 1024)),
        Stream(device.master, good, os.urandom(32 * 1024)),
    ]
    poke(bad)
    pump(streams, timeout=15)
    assert streams[0].received == streams[0].payload
    assert streams[1].received == streams[1].payload

    poke(bad)
    devices = {entry["device"] for entry in vcom.ports()}
    assert devices == {str(bad_port), str(good_port)}

    # What the bad port shows for each kind of bad server.
    if mode == "close":
        # Retried with back-off, the hang-up reported; the program keeps its port.
        wait_until(lambda: hostile.connections() >= 2, 15, "vcom to try the closing server again")
        status = vcom.status(bad_port)
        # "(closed by the server)", or a reset when the server closed with vcom's first bytes unread.
        assert status["last_error"].startswith(f"connection to rfc2217://127.0.0.1:{hostile.port} lost"), status
        assert status["open"] is True and status["com_port"] is not True
        return
    # A server that never negotiates: after the negotiation cap the port carries plain data over
    # the one connection, with nothing invented about the remote and no reconnect loop.
    status = vcom.wait_status(bad_port, lambda s: s["state"] == "connected", what="plain data after the cap")
    assert status["signature"] is None and set(status["remote_settings"].values()) == {None}
    before = status["bytes_to_remote"]
    os.write(bad, b"plain")
    status = vcom.wait_status(bad_port, lambda s: s["bytes_to_remote"] >= before + 5, what="data to the bad server")
    assert status["connects"] == 1 and status["reconnects"] == 0 and hostile.connections() == 1
    if mode == "silent":
        assert status["com_port"] is None and status["bytes_from_remote"] == 0
        wait_until(lambda: b"plain" in hostile.received(), 15, "the silent server to receive the data")
    else:  # garbage: its bytes reach the program as data, the broken telnet in them is skipped
        got = wait_until(lambda: poke(bad), 15, "garbage to reach the program")
        assert got and vcom.status(bad_port)["bytes_from_remote"] >= len(got)


def test_removing_one_port_leaves_the_others_working(vcom: Vcom, make_device, start_peer, open_port, tmp_path):
    dev_a, dev_b = make_device(), make_device()
    server = start_peer(Ser2net(tmp_path / "ser2net", dev_a.path, dev_b.path))
    port_a, port_b = tmp_path / "ttyA", tmp_path / "ttyB"
    vcom.add(port_a, f"127.0.0.1:{server.port}")
    vcom.add(port_b, server.raw_target)
    fd_a, fd_b = open_port(port_a), open_port(port_b)
    handshake(fd_a, dev_a)
    handshake(fd_b, dev_b)

    result = vcom.ok("remove", str(port_a))
    assert not os.path.lexists(port_a)
    assert [entry["device"] for entry in vcom.ports()] == [str(port_b)], result.stdout

    streams = [
        Stream(fd_b, dev_b.master, os.urandom(32 * 1024)),
        Stream(dev_b.master, fd_b, os.urandom(32 * 1024)),
    ]
    pump(streams, timeout=15)
    assert streams[0].received == streams[0].payload
    assert streams[1].received == streams[1].payload
