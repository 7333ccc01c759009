"""Split ports beyond the happy path: two programs on one remote port, one connection.

- A member whose program stops reading keeps at most 64 KiB beyond what its
  pty holds and then loses its *oldest* data, counted in ``dropped_bytes``;
  the other member gets every byte: one stalled reader never stalls the rest.
- Whose settings reach the remote: the first port's while it is open, then
  those of the member open longest.

The data comes from a raw TCP source that pushes a computed pattern as fast
as the socket takes it (bp_peers.PatternSource); the settings are read from
the status of ``vcom share sim:echo``, the server the ports reach.
"""

from __future__ import annotations

import contextlib
import os
import select
import time
from pathlib import Path

from bp_peers import PatternChecker, PatternSource, pattern
from peers import Vcom, drain, open_program, stty, wait_until

SPLIT_BUFFER = 64 * 1024  # README: "keeps at most 64 KiB and then loses its oldest data"
TOTAL = 1024 * 1024


def stream_to_split_ports(vcom: Vcom, start_peer, open_port, tmp_path: Path, total: int, rate: int) -> tuple:
    """Ports A and B (split from A) on a pattern source; ``total`` bytes are pushed at ``rate`` while only A's
    program reads.  Returns (A, B, B's program fd) once A has read everything, byte-exact."""
    source = start_peer(PatternSource(tmp_path / "source", total, rate))
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    target = f"tcp://127.0.0.1:{source.port}"
    vcom.add(a, target)
    vcom.add(b, target, "--split-of", str(a))
    reader, stalled = open_port(a), open_port(b)
    vcom.wait_status(a, lambda s: s["state"] == "connected", what="the shared connection")
    # The source notes its accept after vcom's status says connected: wait for it (as test_backpressure does).
    wait_until(lambda: source.status().get("connections") == 1, 10, "the source to accept vcom")

    source.go()
    checker = PatternChecker()
    deadline = time.monotonic() + 60
    while checker.offset < total:  # B's program never reads meanwhile
        assert time.monotonic() < deadline, f"A got {checker.offset} of {total} bytes while B stalled"
        if select.select([reader], [], [], 0.2)[0]:
            checker.take(drain(reader))
    wait_until(lambda: source.status()["sent"] == total, 10, "the source to report everything sent")
    assert source.status()["connections"] == 1  # one connection shared by A and B, all along
    return a, b, stalled


def test_a_stalled_member_loses_its_oldest_data_and_never_stalls_the_other(
    vcom: Vcom, start_peer, open_port, tmp_path: Path
):
    total = 384 * 1024
    a, b, stalled = stream_to_split_ports(vcom, start_peer, open_port, tmp_path, total, rate=256 * 1024)

    # B held what its pty took first, plus the newest 64 KiB; everything in between is dropped and counted.
    got = bytearray()

    def settled() -> bool:
        got.extend(drain(stalled))
        return len(got) + vcom.query(b)["dropped_bytes"] == total

    wait_until(settled, 15, "B's data and drops to account for every byte")
    status = vcom.status(b)
    assert status["dropped_bytes"] > 0 and vcom.status(a)["dropped_bytes"] == 0
    in_pty = len(got) - SPLIT_BUFFER
    assert 0 < in_pty < SPLIT_BUFFER, f"B kept {len(got)} bytes"
    assert bytes(got[:in_pty]) == pattern(0, in_pty)
    assert bytes(got[in_pty:]) == pattern(total - SPLIT_BUFFER, SPLIT_BUFFER)
    assert status["split_group"] == [str(a), str(b)]


def test_a_reading_member_gets_every_byte_of_a_fast_burst(vcom: Vcom, start_peer, open_port, tmp_path: Path):
    # As fast as the socket takes it: vcom's reads reach 256 KiB, and each read goes to both members.
    a, _, _ = stream_to_split_ports(vcom, start_peer, open_port, tmp_path, TOTAL, rate=0)
    assert vcom.status(a)["dropped_bytes"] == 0


def test_a_slow_reader_holds_the_group_back_and_loses_nothing(vcom: Vcom, start_peer, open_port, tmp_path: Path):
    # A reads at once, C reads 4 KiB at a time with pauses (far slower than the source), B never reads.
    # Whoever reads gets every byte: the connection waits for C; only B, stalled, loses its oldest.
    total = 512 * 1024
    source = start_peer(PatternSource(tmp_path / "source", total, 0))
    a, b, c = tmp_path / "ttyA", tmp_path / "ttyB", tmp_path / "ttyC"
    target = f"tcp://127.0.0.1:{source.port}"
    vcom.add(a, target)
    vcom.add(b, target, "--split-of", str(a))
    vcom.add(c, target, "--split-of", str(a))
    fast, stalled, slow = open_port(a), open_port(b), open_port(c)
    vcom.wait_status(a, lambda s: s["state"] == "connected", what="the shared connection")
    source.go()
    checkers = {fast: PatternChecker(), slow: PatternChecker()}
    deadline = time.monotonic() + 90
    while checkers[slow].offset < total:
        assert time.monotonic() < deadline, f"A got {checkers[fast].offset}, C {checkers[slow].offset} of {total}"
        for fd in select.select([fast, slow], [], [], 0.2)[0]:
            if fd == fast:
                checkers[fast].take(drain(fast))
            else:
                with contextlib.suppress(BlockingIOError):
                    checkers[slow].take(os.read(slow, 4096))
                time.sleep(0.005)
    wait_until(lambda: checkers[fast].take(drain(fast)) or checkers[fast].offset == total, 15, "A to get everything")
    assert vcom.status(a)["dropped_bytes"] == 0 and vcom.status(c)["dropped_bytes"] == 0
    got = bytearray()

    def settled() -> bool:
        got.extend(drain(stalled))
        return len(got) + vcom.query(b)["dropped_bytes"] == total

    wait_until(settled, 15, "B's data and drops to account for every byte")
    assert vcom.status(b)["dropped_bytes"] > 0
    assert bytes(got[-SPLIT_BUFFER:]) == pattern(total - SPLIT_BUFFER, SPLIT_BUFFER)


def test_settings_pass_to_the_member_open_longest_when_the_first_closes(vcom: Vcom, open_port, tmp_path: Path):
    listen = vcom.share("sim:echo")
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    vcom.add(a, f"127.0.0.1:{listen}")
    vcom.add(b, f"127.0.0.1:{listen}", "--split-of", str(a))
    first = open_program(a)  # closed by the test itself, below
    open_port(b)
    stty(b, "19200")
    vcom.wait_status(b, lambda s: s["settings"]["baud"] == 19200, what="B's program setting 19200")
    # A is the first port and open: what its program sets is what the remote runs, whatever B sets.
    try:
        stty(a, "4800")
        shared = vcom.wait_status("sim:echo", lambda s: s["settings"]["baud"] == 4800, what="A's 4800 at the remote")
        assert vcom.status(b)["settings_from"] == str(a)
        assert len(shared["clients"]) == 1
    finally:
        os.close(first)  # A's program leaves: B, open longest now, takes over with what it set
    vcom.wait_status("sim:echo", lambda s: s["settings"]["baud"] == 19200, what="B's 19200 at the remote")
    assert vcom.status(b)["settings_from"] == str(b)
