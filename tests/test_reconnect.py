"""Reconnecting: capped exponential back-off with jitter, and TCP keepalive.

README: "A lost connection is retried with capped exponential back-off and
jitter (0.25 s doubling up to --retry-max)" and "TCP keepalive and the link's own watch on
unacknowledged data notice a silent peer within the port's peer timeout (15 s by default)".  The delays are
checked two ways: the Backoff policy itself over many draws, and a real port against a server that
hangs up at once, whose accept times give lower bounds only (a loaded
machine can only make the gaps longer) and whose count within a deadline
shows the cap.  Keepalive is read from the manager's own socket.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import socket
import time
import tty
from pathlib import Path

import pytest
from peers import HostileServer, Vcom, wait_until

from vcom.link import PEER_TIMEOUT, Backoff, keepalive_times
from vcom.share import limits as share_limits

FIRST = 0.25  # README: 0.25 s doubling


def test_backoff_doubles_from_a_quarter_second_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(maximum=15.0)
    for attempt in range(12):
        ceiling = min(15.0, FIRST * 2**attempt)
        draws = [backoff.delay(attempt) for _ in range(300)]
        assert all(ceiling / 2 <= d <= ceiling for d in draws), (attempt, min(draws), max(draws))
        assert max(draws) > 0.9 * ceiling and min(draws) < 0.6 * ceiling  # spread over [ceiling/2, ceiling]
        assert len(set(draws)) > 250  # jitter: ports behind one server do not retry in lock step
    assert Backoff(maximum=2.0).delay(40) <= 2.0  # no overflow far along


def test_a_port_retries_with_back_off_and_the_retry_max_cap(vcom: Vcom, start_peer, tmp_path: Path):
    server = start_peer(HostileServer(tmp_path / "closing", "close"))  # accepts, then hangs up at once
    port = tmp_path / "ttyV0"
    cap = 0.5
    vcom.add(port, f"127.0.0.1:{server.port}", "--connect", "always", "--retry-max", str(cap))
    # Without the cap the 10th attempt would come after more than 30 s (the lower bounds of the doubling
    # delays, capped at the default 15 s, add up to that); with it, well within the deadline.
    times = wait_until(lambda: (t := server.accept_times()) and len(t) >= 10 and t, 20, "ten attempts")
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    for attempt, gap in enumerate(gaps[:9]):
        # Each wait is at least half the capped doubling delay; the connect itself only adds to it.
        assert gap >= min(cap, FIRST * 2**attempt) / 2 * 0.98, (attempt, gaps)
    status = vcom.status(port)
    assert status["connects"] >= 10
    assert status["last_error"].startswith(f"connection to rfc2217://127.0.0.1:{server.port} lost")
    assert status["open"] is False  # no program needed: --connect always


# pidfd_getfd(2): a copy of another process's file descriptor (here: the manager's socket to the server).
_SYS_PIDFD_GETFD = 438  # x86_64 and aarch64 (asm-generic)


def _socket_of(pid: int, remote_port: int) -> socket.socket:
    """A duplicate of the socket ``pid`` has connected to 127.0.0.1:remote_port."""
    established = "01"
    inodes = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue  # closed since the listing (the control connection of the status just asked, say)
        if target.startswith("socket:["):
            inodes[target[8:-1]] = int(fd)
    with open(f"/proc/{pid}/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if int(fields[2].split(":")[1], 16) == remote_port and fields[3] == established and fields[9] in inodes:
                target_fd = inodes[fields[9]]
                break
        else:
            raise AssertionError(f"no connection of {pid} to port {remote_port}")
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        copy = libc.syscall(_SYS_PIDFD_GETFD, pidfd, target_fd, 0)
        if copy < 0:
            errno = ctypes.get_errno()
            pytest.skip(f"pidfd_getfd: {os.strerror(errno)}")
    finally:
        os.close(pidfd)
    return socket.socket(fileno=copy)


def test_the_link_socket_has_keepalive_to_notice_a_silent_peer(vcom: Vcom, start_peer, tmp_path: Path):
    server = start_peer(HostileServer(tmp_path / "silent", "silent"))
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{server.port}", "--connect", "always")
    wait_until(lambda: server.connections() == 1, 15, "the connection")
    # The server's accept can come before the manager's loop has taken the connection (and tuned its socket):
    # the link counts a connect once it has.
    vcom.wait_status(port, lambda s: s["connects"] == 1, what="the link's connection made")
    with _socket_of(vcom.manager_pid(), server.port) as sock:
        options = (sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                   sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                   sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                   sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                   sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                   sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))
    # The default peer timeout, 15 s: probes after 5 s of silence, every 2 s; the kernel gives up on a
    # silent peer (keepalive) at 15 s.  Unacknowledged data is the link's own watch, not TCP_USER_TIMEOUT:
    # the kernel would apply that to a closed window too (test_a_server_that_keeps_its_window_shut...).
    assert options[0] == 1 and options[1] + options[2] * options[3] <= 15, options
    assert options[1:4] == keepalive_times(PEER_TIMEOUT) == (5, 2, 5) and options[4] == 1
    assert options[5] == 0


def test_a_share_keeps_its_clients_sockets_alive_to_notice_one_that_vanished(vcom: Vcom, device):
    """A client that vanished without a word would hold its place: the share's side of every client
    connection probes it (limits.KEEPALIVE: idle, interval, count)."""
    shared = vcom.share(device.path, "--protocol", "tcp")
    with socket.create_connection(("127.0.0.1", shared), timeout=10) as client:
        client_port = client.getsockname()[1]

        def accepted() -> socket.socket | None:
            # The kernel's accept comes before the share's loop takes the connection and tunes its socket.
            try:
                sock = _socket_of(vcom.manager_pid(), client_port)
            except AssertionError:  # not accepted yet
                return None
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE):
                return sock
            sock.close()
            return None

        with wait_until(accepted, 15, "the share to take the client and turn keepalive on") as sock:
            options = (sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                       sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                       sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                       sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT))
    assert options == (1, *share_limits.KEEPALIVE), options


def test_the_peer_timeout_is_a_per_port_option(vcom: Vcom, start_peer, tmp_path: Path):
    server = start_peer(HostileServer(tmp_path / "silent", "silent"))
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{server.port}", "--connect", "always", "--peer-timeout", "30")
    wait_until(lambda: server.connections() == 1, 15, "the connection")
    vcom.wait_status(port, lambda s: s["connects"] == 1, what="the link's connection made")
    with _socket_of(vcom.manager_pid(), server.port) as sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
    assert vcom.status(port)["peer_timeout"] == 30
    assert "peer_timeout = 30.0" in (vcom.home / "vcom.toml").read_text()


def test_the_first_retries_after_a_healthy_connection_are_quick() -> None:
    backoff = Backoff(maximum=15.0)
    assert backoff.quick == 2.0 and backoff.quick_for == 60.0
    assert keepalive_times(0) == (10, 5, 3)  # peer timeout off: the earlier probes, the kernel's own limits
    for timeout in (1, 5, 15, 60):
        idle, interval, count = keepalive_times(timeout)
        assert idle + interval * count >= timeout and idle <= max(1, timeout / 3), (timeout, idle, interval, count)


def test_a_server_that_keeps_its_window_shut_is_alive_and_loses_nothing(vcom: Vcom, tmp_path: Path):
    """A server whose UART is held off (a printer out of paper) takes nothing for many peer timeouts but
    answers the kernel's window probes: the connection stays, and every byte arrives once it reads again.
    Peer timeout 1 s, window shut 6 s: the probes' gaps grow past 1 s (0.2, 0.4 ... 3.2 s)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    payload = os.urandom(512 * 1024)
    got = bytearray()
    try:
        port = tmp_path / "ttyV0"
        vcom.add(port, f"tcp://127.0.0.1:{listener.getsockname()[1]}", "--connect", "always",
                 "--peer-timeout", "1")
        listener.settimeout(15)
        server, _ = listener.accept()
        with server:
            fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            try:
                tty.setraw(fd)
                view = memoryview(payload)
                shut_until = time.monotonic() + 6
                while time.monotonic() < shut_until and view:  # fill everything up to the shut window
                    if select.select([], [fd], [], 0.1)[1]:
                        with contextlib.suppress(BlockingIOError):
                            view = view[os.write(fd, view[:65536]):]
                assert view, "the shut window held nothing back"
                status = vcom.status(port)
                assert status["state"] == "connected" and status["timeouts"] == 0, status
                server.settimeout(10)
                deadline = time.monotonic() + 60
                while len(got) < len(payload) and time.monotonic() < deadline:
                    if view and select.select([], [fd], [], 0)[1]:
                        with contextlib.suppress(BlockingIOError):
                            view = view[os.write(fd, view[:65536]):]
                    with contextlib.suppress(TimeoutError):
                        server.settimeout(0.05)
                        got += server.recv(65536)
            finally:
                os.close(fd)
    finally:
        listener.close()
    assert bytes(got) == payload
    status = vcom.status(port)
    assert (status["connects"], status["timeouts"], status["lost_bytes"]) == (1, 0, 0), status
