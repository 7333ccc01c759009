"""Hostile servers hurt only their own port: memory stays flat, the log stays readable, nothing is lost
unseen, healthy ports beside them keep working, and a closed port costs what a UART costs.

The servers are real processes on 127.0.0.1 (tests/peers.py, HostileServer): endless random bytes; a
DO/WILL and SIGNATURE flood that never reads vcom's answers; a subnegotiation that never ends; a
slowloris trickle; a slow reader that resets the connection again and again.  No assertion is about time:
the healthy ports must make progress (every byte back, in order), and the figures the manager shows
(memory, log lines, counters) must stay within bounds while the hostile servers do their worst.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from peers import HostileServer, Socat, Vcom, wait_until

MiB = 1024 * 1024
# The manager's memory may grow by this much while five hostile servers run beside healthy ports: its
# bounded buffers (64 KiB per link plus the answers a non-reading server may cost, 192 KiB, per port),
# reads of up to 256 KiB coming and going, allocator slack.  Holding what the never-reading flood asks
# for would grow it by megabytes a second.
RSS_GROWTH_BOUND = 24 * MiB
# Log lines the whole run may add: a few a minute per hostile port (connects, disconnects with their
# reason, once-a-minute summaries) and the healthy ports' few.  One line per unknown telnet command or
# per refusal would be thousands.
LOG_LINE_BOUND = 150
ROUND_TRIPS = 150  # per healthy port, while the hostile servers run


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def log_lines(vcom: Vcom) -> list[str]:
    return (vcom.home / "vcom.log").read_text(errors="replace").splitlines()


def round_trip(fd: int, message: bytes, timeout: float = 20) -> bytes:
    os.write(fd, message)
    got = b""
    deadline = time.monotonic() + timeout
    while len(got) < len(message) and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            got += os.read(fd, len(message) - len(got))
    return got


@pytest.fixture
def echo_server(tmp_path: Path, start_peer: Callable[[Socat], Socat]) -> Socat:
    """A raw TCP echo (socat PIPE), a healthy far end for tcp:// ports."""
    return start_peer(Socat(tmp_path / "echo", "TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", "PIPE"))


def test_hostile_servers_cost_their_own_port_only(vcom: Vcom, start_peer, open_port, echo_server: Socat,
                                                   tmp_path: Path):
    healthy = {tmp_path / "ttyTcp": f"tcp://127.0.0.1:{echo_server.port}",
               tmp_path / "ttyRfc": f"127.0.0.1:{vcom.share('sim:echo', '--max-clients-per-address', '32')}"}
    for device, target in healthy.items():
        vcom.add(device, target, "--baud", "115200")
    fds = {device: open_port(device) for device in healthy}
    for device, fd in fds.items():
        assert round_trip(fd, b"hello") == b"hello", device  # all up before the hostile servers come

    pid = vcom.manager_pid()
    before_rss = peak_rss = rss(pid)
    before_log = len(log_lines(vcom))
    hostile = {}
    for mode in HostileServer.FLOODS:
        server = start_peer(HostileServer(tmp_path / mode, mode))
        device = tmp_path / f"ttyH{mode}"
        vcom.add(device, f"127.0.0.1:{server.port}", "--connect", "always")
        hostile[mode] = (device, server)

    payloads = {device: os.urandom(512) for device in fds}
    for trip in range(ROUND_TRIPS):
        for device, fd in fds.items():
            message = payloads[device][trip % 256:] + trip.to_bytes(4, "big")
            assert round_trip(fd, message) == message, f"{device}: round trip {trip} while the hostile servers run"
        if trip % 10 == 0:
            peak_rss = max(peak_rss, rss(pid))

    # Each hostile server has had its effect: the bounded ones were disconnected with a reason, and tried again.
    def disconnected(mode: str, *reasons: str) -> dict:
        device, _ = hostile[mode]
        return vcom.wait_status(
            device, lambda s: s["bound_disconnects"] >= 1 and any(r in (s["last_error"] or "") for r in reasons),
            timeout=30, what=f"the {mode} server disconnected for {' or '.join(reasons)}")

    # Whichever bound it reaches first: its commands within the window, or the answers it leaves unread.
    disconnected("flood", "telnet commands within", "does not read what vcom sends")
    disconnected("subneg", "subnegotiation longer than")
    flooded = vcom.wait_status(hostile["flood"][0], lambda s: s["connects"] >= 2, timeout=30,
                               what="the flooding server tried again after the back-off")
    assert flooded["state"] in ("connected", "connecting", "backoff")
    wait_until(lambda: hostile["disconnect"][1].connections() >= 3, 30, "the resetting server reached again")
    peak_rss = max(peak_rss, rss(pid))

    growth = peak_rss - before_rss
    assert growth < RSS_GROWTH_BOUND, f"manager memory grew by {growth / MiB:.1f} MiB"
    added = log_lines(vcom)[before_log:]
    assert len(added) < LOG_LINE_BOUND, f"{len(added)} log lines, e.g.:\n" + "\n".join(added[-40:])
    assert not any("Traceback" in line for line in added), "\n".join(added)
    print(f"\nmanager memory grew {growth / MiB:.1f} MiB; {len(added)} log lines during the run")
    for device in fds:
        status = vcom.status(device)
        assert status["state"] == "connected" and status["reconnects"] == 0, status


def test_a_dying_server_loses_bytes_and_says_how_many(vcom: Vcom, start_peer, open_port, tmp_path: Path):
    """The server reads slowly, then resets: what vcom had sent and it never acknowledged is lost_bytes."""
    server = start_peer(HostileServer(tmp_path / "dying", "disconnect"))
    device = tmp_path / "ttyV0"
    vcom.add(device, f"tcp://127.0.0.1:{server.port}", "--connect", "always")
    fd = open_port(device)
    written = 0
    block = b"x" * 4096
    deadline = time.monotonic() + 30
    while server.connections() < 4 and time.monotonic() < deadline:
        if select.select([], [fd], [], 0.1)[1]:
            try:
                written += os.write(fd, block)
            except BlockingIOError:
                pass
    assert server.connections() >= 4, "the server was not reached four times"
    status = vcom.wait_status(device, lambda s: s["lost_at_disconnect"] > 0, timeout=15,
                              what="bytes lost with a reset connection counted")
    received = len(server.received())
    # Lost is what was handed to the connection and never acknowledged: never more than what did not arrive.
    assert status["lost_bytes"] == status["lost_at_disconnect"] + status["lost_at_close"]
    assert 0 < status["lost_at_disconnect"] <= written - received, (status["lost_at_disconnect"], written, received)
    assert "were not acknowledged when the connection was lost" in (vcom.home / "vcom.log").read_text()
    assert (vcom.home / "vcom.log").stat().st_mode & 0o077 == 0  # the log names peers and data: owner only


def test_a_closed_port_reads_a_fast_server_at_its_line_rate(vcom: Vcom, start_peer, tmp_path: Path):
    server = start_peer(HostileServer(tmp_path / "fast", "random"))
    device = tmp_path / "ttyV0"
    vcom.add(device, f"tcp://127.0.0.1:{server.port}", "--connect", "always", "--baud", "9600")
    first = vcom.wait_status(device, lambda s: s["bytes_from_remote"] > 0, what="the first bytes")
    started = time.monotonic()
    cpu_before = _cpu_seconds(vcom.manager_pid())
    time.sleep(3)  # the span over which the rate is measured; nothing waits for an event here
    status = vcom.status(device)
    elapsed = time.monotonic() - started
    cpu = _cpu_seconds(vcom.manager_pid()) - cpu_before
    taken = status["bytes_from_remote"] - first["bytes_from_remote"]
    # 9600 baud: 960 bytes a second, plus the one read (at most 256 KiB) that the pacing pays for afterwards.
    assert taken <= 960 * elapsed + 256 * 1024, f"{taken} bytes read in {elapsed:.1f} s by a closed port"
    assert status["dropped_bytes"] == status["bytes_from_remote"] and status["open"] is False
    assert cpu < 0.5 * elapsed, f"the manager used {cpu:.2f} s of CPU in {elapsed:.1f} s for a closed port"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
