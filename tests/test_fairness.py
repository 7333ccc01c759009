"""One manager, healthy ports beside servers that flood: the healthy ports keep working.

Every connection gets a bounded share of the manager's event loop (vcom.link:
each read is sized to what its data costs to decode, and a connection that
keeps using more than its share waits).  Without that, one read of a flood of
telnet commands took the loop for a third of a second, and every other port's
round trip waited behind it, read after read.

The assertions are about progress, not time: the healthy ports complete their
round trips, byte-exact, while both floods are still running (their servers
keep sending, or still have bytes waiting for vcom).  The deadline only stops a
broken build from hanging the suite: without the budget, the round trips did not
complete within it.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from flood_peers import FloodServer
from peers import Vcom, read_exact, wait_until, write_all

ROUND_TRIPS = 200  # per healthy port
DEADLINE = 60.0  # for all of them; a loop one command flood can stall needs minutes


def test_healthy_ports_keep_their_round_trips_beside_flooding_servers(vcom: Vcom, start_peer, open_port,
                                                                      tmp_path: Path):
    echo = start_peer(FloodServer(tmp_path / "echo", "echo"))
    floods = [start_peer(FloodServer(tmp_path / mode, mode)) for mode in ("commands", "random")]
    for flood in floods:
        vcom.add(tmp_path / f"tty-{flood.mode}", f"rfc2217://127.0.0.1:{flood.port}", "--connect", "always")
    healthy = [tmp_path / f"ttyH{i}" for i in range(2)]
    for path in healthy:
        vcom.add(path, f"tcp://127.0.0.1:{echo.port}")
    fds = [open_port(path) for path in healthy]
    for path in healthy:
        vcom.wait_status(path, lambda s: s["state"] == "connected", what="the healthy port's connection")
    # Both floods are on.
    wait_until(lambda: all(flood.sent() > 0 for flood in floods), 30, "both floods to be under way")
    sent_before = [flood.sent() for flood in floods]

    round_trips(fds, time.monotonic() + DEADLINE)

    # The floods went on all along: the round trips did not slip through a pause of theirs.
    # (vcom takes the command flood slowly, by design: its server still has bytes waiting for vcom.)
    wait_until(lambda: all(flood.sent() > before or flood.waiting() > 0
                           for flood, before in zip(floods, sent_before, strict=True)),
               30, "the floods to go on after the round trips")


def round_trips(fds: list[int], deadline: float) -> None:
    """ROUND_TRIPS one-byte echoes on every port in turn, each checked, all before ``deadline``."""
    for i in range(ROUND_TRIPS):
        for fd in fds:
            byte = bytes((0x41 + i % 26,))
            write_all(fd, byte)
            try:
                echoed = read_exact(fd, 1, timeout=max(0.0, deadline - time.monotonic()))
            except AssertionError:
                raise AssertionError(f"{i} of {ROUND_TRIPS} round trips per port came back while the floods ran"
                                     ) from None
            assert echoed == byte


def test_flood_servers_report_what_they_sent(tmp_path: Path, start_peer):
    # The helper's own check: a flood that sends nothing would make the test above pass for nothing.
    flood = start_peer(FloodServer(tmp_path / "commands", "commands"))
    with socket.create_connection(("127.0.0.1", flood.port)) as client:
        client.settimeout(10)
        got = client.recv(6)
        assert got == bytes((255, 253, 99, 255, 251, 98))
        wait_until(lambda: flood.sent() > 0, 10, "the flood's count")
    assert os.path.exists(flood.status_path)
