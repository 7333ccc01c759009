"""A silent network partition: noticed within the peer timeout, counted, and healed soon after.

The manager and an echo server run in a network namespace this test makes; nft drops every packet of
their connection both ways, as a dead switch or a pulled cable would (no RST, no ICMP, nothing).  The
program keeps writing, so data is in flight when the network goes.  The test waits for the events (the
port leaving ``connected`` with a peer-timeout error; data flowing again once the rules are gone) and
prints how long each took (``pytest -s``): the figures for the README, not assertions on time.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import NamespacedManager, Socat, Vcom


def _missing() -> str | None:
    for tool in ("unshare", "nsenter", "ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(["unshare", "--net", "sh", "-c", "ip link set lo up && nft list tables"],
                           capture_output=True, text=True, timeout=30)
    return None if probe.returncode == 0 else f"cannot use nft in a network namespace: {probe.stderr.strip()}"


def _namespace(vcom: Vcom) -> NamespacedManager:
    """``vcom run`` in a network namespace of its own."""
    return NamespacedManager(vcom, f'set -e; ip link set lo up; exec "{sys.executable}" -m vcom run --no-keeper')


class NamespacedEcho(Socat):
    def __init__(self, workdir: Path, namespace: NamespacedManager) -> None:
        super().__init__(workdir, "TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", "PIPE")
        self.namespace = namespace

    def command(self) -> list[str]:
        return [*self.namespace.prefix(), *super().command()]


@pytest.fixture
def namespace(vcom: Vcom) -> Iterator[NamespacedManager]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    space = _namespace(vcom)
    try:
        yield space
    finally:
        space.stop()


def _pump(fd: int, until: float) -> int:
    """Write and read back through the port until ``until``; bytes written."""
    written = 0
    while time.monotonic() < until:
        readable, writable, _ = select.select([fd], [fd], [], 0.05)
        if readable:
            os.read(fd, 65536)
        if writable:
            try:
                written += os.write(fd, b"p" * 1024)
            except BlockingIOError:
                pass
        time.sleep(0.01)
    return written


def test_a_silent_partition_is_noticed_and_healed(vcom: Vcom, namespace: NamespacedManager, start_peer, open_port,
                                                   tmp_path: Path):
    echo = start_peer(NamespacedEcho(tmp_path / "echo", namespace))
    device = tmp_path / "ttyV0"
    vcom.add(device, f"tcp://127.0.0.1:{echo.port}", "--connect", "always")
    fd = open_port(device)
    vcom.wait_status(device, lambda s: s["state"] == "connected", what="connected")
    _pump(fd, time.monotonic() + 1)  # traffic flowing both ways
    assert vcom.status(device)["bytes_from_remote"] > 0

    rules = tmp_path / "partition.nft"
    rules.write_text(f"table inet partition {{\n  chain input {{\n    type filter hook input priority 0;\n"
                     f"    tcp dport {echo.port} drop\n    tcp sport {echo.port} drop\n  }}\n}}\n")
    namespace.inside("nft", "-f", str(rules))
    dropped_at = time.monotonic()
    _pump(fd, dropped_at + 2)  # the program goes on writing: data is left unacknowledged in flight
    status = vcom.wait_status(device, lambda s: s["state"] != "connected", timeout=60,
                              what="the partition noticed")
    noticed = time.monotonic() - dropped_at
    assert status["timeouts"] == 1, status
    assert "no answer from the server within 15 s (peer timeout)" in status["last_error"], status
    assert status["lost_at_disconnect"] > 0 and status["lost_bytes"] >= status["lost_at_disconnect"], status

    # VCOM_PARTITION_SECONDS: keep the network down that long in all (connect attempts meanwhile time out) to
    # measure recovery after a longer outage; by default it heals as soon as the loss is noticed.
    time.sleep(max(0.0, float(os.environ.get("VCOM_PARTITION_SECONDS", "0")) - (time.monotonic() - dropped_at)))
    namespace.inside("nft", "delete table inet partition")
    healed_at = time.monotonic()
    connects = status["connects"]
    vcom.wait_status(device, lambda s: s["connects"] > connects and s["state"] == "connected", timeout=60,
                     what="connected again after the network healed")
    reconnected = time.monotonic() - healed_at
    while select.select([fd], [], [], 0.2)[0]:  # what was written meanwhile, echoed
        os.read(fd, 65536)
    os.write(fd, b"after the partition")
    got = b""
    deadline = time.monotonic() + 30
    while b"after the partition" not in got and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            got += os.read(fd, 65536)
    assert b"after the partition" in got
    flowing = time.monotonic() - healed_at
    print(f"\npartition noticed after {noticed:.1f} s; connected again {reconnected:.1f} s and data flowing "
          f"{flowing:.1f} s after the network healed; {status['lost_at_disconnect']} bytes counted as lost")


@pytest.mark.native  # the shared relay is C
def test_a_quiet_port_lent_to_the_shared_relay_still_notices_a_dead_server(vcom: Vcom, start_peer, open_port,
                                                                           tmp_path: Path):
    """A port that moves a chunk now and then is lent to the loop's shared relay (vcom.port.express) and
    stays there while quiet.  The relay's sends are its own, not the link's: a chunk it sends into a
    silent partition must still start the link's peer-timeout watch, or the connection would wait on
    the kernel's retransmissions for a quarter of an hour."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    vcom.env["VCOM_EXPRESS_HOT"] = "1000000"  # never a relay thread of its own: the shared relay
    vcom.env["VCOM_EXPRESS_WARM"] = "2"
    space = _namespace(vcom)
    try:
        echo = start_peer(NamespacedEcho(tmp_path / "echo", space))
        device = tmp_path / "ttyV0"
        vcom.add(device, f"tcp://127.0.0.1:{echo.port}", "--connect", "always", "--peer-timeout", "2")
        fd = open_port(device)
        vcom.wait_status(device, lambda s: s["state"] == "connected", what="connected")
        for i in range(6):  # a few exchanges: warm, lent
            os.write(fd, b"ping %d\n" % i)
            got = b""
            while not got.endswith(b"ping %d\n" % i):
                assert select.select([fd], [], [], 10)[0], "no echo"
                got += os.read(fd, 4096)
        vcom.wait_status(device, lambda s: s["express_shared"], what="lent to the shared relay")
        time.sleep(1.5)  # quiet: it stays lent
        assert vcom.query(device)["express_shared"]

        rules = tmp_path / "partition.nft"
        rules.write_text(f"table inet partition {{\n  chain input {{\n    type filter hook input priority 0;\n"
                         f"    tcp dport {echo.port} drop\n    tcp sport {echo.port} drop\n  }}\n}}\n")
        space.inside("nft", "-f", str(rules))
        os.write(fd, b"into the void\n")  # sent by the shared relay, never acknowledged
        status = vcom.wait_status(device, lambda s: s["state"] != "connected", timeout=30,
                                  what="the dead server noticed")
        assert status["timeouts"] == 1, status
        assert "no answer from the server within 2 s (peer timeout)" in status["last_error"], status
    finally:
        space.stop()
