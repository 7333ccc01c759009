"""Tests of vcom.udevwatch.

Link events are real: the watcher runs in a network namespace the test
creates (``unshare -n``), and the test changes links there with
``nsenter ... ip link`` (a veth pair and ``lo``), so the host's interfaces
are never touched.  The namespace dies with the watcher process.

tty hot-plug cannot be made real here (no device to plug, and synthesising
uevents through ``/sys/.../uevent`` would reach every process on the host),
so ``device_event`` is fed stand-ins with the four attributes the watcher
reads from a ``pyudev.Device``.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from vcom.udevwatch import (
    NETLINK_ROUTE,
    NLMSG_DONE,
    RTM_DELLINK,
    RTM_NEWLINK,
    LinkMessage,
    LinkTracker,
    UdevWatcher,
    dump_request,
    parse_messages,
)

_LINE_WAIT = 10.0  # a bound on each read from the watcher, not a measured time

# The watcher in its own namespace: one JSON line per callback on stdout; stops when stdin closes.
_CHILD = r"""
import asyncio, json, os, sys
from vcom.udevwatch import UdevWatcher

def emit(**fields):
    print(json.dumps(fields), flush=True)

async def main():
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    watcher = UdevWatcher(loop, lambda n: emit(link_up=n), lambda d: emit(tty_added=d),
                          lambda d: emit(tty_removed=d))
    emit(started=watcher.start(), links=watcher.watching_links, pid=os.getpid())
    loop.add_reader(sys.stdin.fileno(), stop.set)
    await stop.wait()
    watcher.close()

asyncio.run(main())
"""


def _can_make_netns() -> str | None:
    """Why namespaced link tests cannot run here, or None."""
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(
        ["unshare", "-n", "--", "ip", "link", "add", "va", "type", "veth", "peer", "name", "vb"],
        capture_output=True, text=True, timeout=30,
    )
    if probe.returncode != 0:
        return f"cannot create a network namespace with a veth pair: {probe.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def netns_ok() -> None:
    reason = _can_make_netns()
    if reason:
        pytest.skip(reason)


class NamespacedWatcher:
    """A UdevWatcher running in a fresh network namespace, and a way to change links there."""

    def __init__(self, before: str = "") -> None:
        shell = f'{before}exec "$0" -c "$1"'
        self.proc = subprocess.Popen(
            ["unshare", "-n", "--", "sh", "-c", shell, sys.executable, _CHILD],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        self._pending = b""  # read from the pipe, not yet a whole line
        self.hello = self.next_event()
        self.events: list[dict[str, object]] = []

    def ip(self, *args: str) -> None:
        pid = str(self.hello["pid"])
        subprocess.run(["nsenter", "-t", pid, "-n", "ip", *args], check=True, timeout=30)

    def next_event(self) -> dict[str, object]:
        # os.read, not readline: a buffered file would hide lines from select().
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._pending:
            ready, _, _ = select.select([fd], [], [], _LINE_WAIT)
            assert ready, f"the watcher reported nothing (so far: {self._pending!r})"
            chunk = os.read(fd, 4096)
            assert chunk, f"the watcher exited (status {self.proc.poll()})"
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return json.loads(line)

    def wait_link_up(self, *names: str) -> list[dict[str, object]]:
        """Read events until each of ``names`` came up; return everything read."""
        missing = set(names)
        seen: list[dict[str, object]] = []
        for _ in range(50):
            event = self.next_event()
            seen.append(event)
            missing.discard(str(event.get("link_up")))
            if not missing:
                return seen
        raise AssertionError(f"no link_up for {sorted(missing)} in {seen}")

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def netns_watcher(netns_ok: None) -> Iterator[Callable[..., NamespacedWatcher]]:
    started: list[NamespacedWatcher] = []

    def start(before: str = "") -> NamespacedWatcher:
        started.append(NamespacedWatcher(before))
        return started[-1]

    yield start
    for watcher in started:
        watcher.stop()


def _link_ups(events: list[dict[str, object]]) -> list[object]:
    return [e["link_up"] for e in events if "link_up" in e]


# -- real link events in a network namespace -------------------------------------------------


def test_link_up_fires_when_up_and_running(netns_watcher: Callable[..., NamespacedWatcher]) -> None:
    w = netns_watcher()
    assert w.hello["started"] is True and w.hello["links"] is True
    w.ip("link", "add", "va", "type", "veth", "peer", "name", "vb")
    w.ip("link", "set", "va", "up")  # up but not running: its peer is down, so no carrier
    w.ip("link", "set", "lo", "up")  # a marker: rtnetlink delivers in order, so anything about va came first
    assert _link_ups(w.wait_link_up("lo")) == ["lo"]
    w.ip("link", "set", "vb", "up")  # now both ends have carrier
    assert sorted(_link_ups(w.wait_link_up("va", "vb"))) == ["va", "vb"]


def test_link_up_fires_again_after_going_down(netns_watcher: Callable[..., NamespacedWatcher]) -> None:
    w = netns_watcher()
    w.ip("link", "add", "va", "type", "veth", "peer", "name", "vb")
    w.ip("link", "set", "va", "up")
    w.ip("link", "set", "vb", "up")
    assert sorted(_link_ups(w.wait_link_up("va", "vb"))) == ["va", "vb"]
    w.ip("link", "set", "vb", "down")
    w.ip("link", "set", "vb", "name", "vc")  # the name reported is the current one
    w.ip("link", "set", "vc", "up")
    assert sorted(_link_ups(w.wait_link_up("va", "vc"))) == ["va", "vc"]


def test_links_already_up_at_start_do_not_fire(netns_watcher: Callable[..., NamespacedWatcher]) -> None:
    w = netns_watcher(before="ip link set lo up && ")
    w.ip("link", "add", "va", "type", "veth", "peer", "name", "vb")
    w.ip("link", "set", "va", "up")
    w.ip("link", "set", "vb", "up")
    w.ip("link", "set", "lo", "mtu", "1500")  # lo changes but stays up: not news
    w.ip("link", "set", "va", "down")
    w.ip("link", "set", "va", "up")
    events = w.wait_link_up("va", "vb")
    events += w.wait_link_up("va")  # a barrier after the lo change
    assert "lo" not in _link_ups(events)


# -- rtnetlink parsing, against the kernel and against bad input ------------------------------


def test_dump_of_this_namespace_parses() -> None:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        sock.settimeout(_LINE_WAIT)
        sock.send(dump_request(77))
        port = sock.getsockname()[0]
        messages: list[LinkMessage] = []
        for _ in range(100):
            messages += parse_messages(sock.recv(65536))
            if messages and messages[-1].type == NLMSG_DONE:
                break
    assert messages[-1] == LinkMessage(NLMSG_DONE, 77, port)
    assert all(m.pid == port and m.seq == 77 for m in messages)  # how the watcher tells replies from news
    links = {m.ifname: m for m in messages if m.type == RTM_NEWLINK}
    assert links["lo"].ifindex == 1
    assert links["lo"].flags & 0x1 == 0x1  # lo is up in any namespace the test suite can run in


def test_truncated_or_corrupt_messages_yield_nothing() -> None:
    request = dump_request(1)
    assert list(parse_messages(request[:-1])) == []  # header says longer than the data
    assert list(parse_messages(b"\x04\x00\x00\x00" + request[4:])) == []  # length below a header
    assert list(parse_messages(b"")) == []


def test_tracker_reports_only_transitions_to_usable() -> None:
    up = LinkMessage(RTM_NEWLINK, 0, ifindex=5, ifname="eth1", flags=0x1 | 0x40)
    down = LinkMessage(RTM_NEWLINK, 0, ifindex=5, ifname="eth1", flags=0x1)
    gone = LinkMessage(RTM_DELLINK, 0, ifindex=5, ifname="eth1")
    tracker = LinkTracker()
    tracker.seed(up)
    assert tracker.update(up) is False
    assert tracker.update(down) is False
    assert tracker.update(up) is True
    tracker.update(gone)
    assert tracker.update(up) is True  # a new interface with the same index starts from down


# -- udev events (stand-ins for pyudev.Device) -----------------------------------------------


@dataclass
class FakeEvent:
    action: str | None
    subsystem: str | None
    device_node: str | None
    sys_name: str


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def watcher(self, loop: asyncio.AbstractEventLoop) -> UdevWatcher:
        return UdevWatcher(
            loop,
            lambda n: self.calls.append(("link_up", n)),
            lambda d: self.calls.append(("tty_added", d)),
            lambda d: self.calls.append(("tty_removed", d)),
        )


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_tty_add_and_remove(loop: asyncio.AbstractEventLoop) -> None:
    rec = Recorder()
    watcher = rec.watcher(loop)
    watcher.device_event(FakeEvent("add", "tty", "/dev/ttyUSB0", "ttyUSB0"))
    watcher.device_event(FakeEvent("change", "tty", "/dev/ttyUSB0", "ttyUSB0"))
    watcher.device_event(FakeEvent("add", "tty", None, "ttyX"))  # no node: nothing to open
    watcher.device_event(FakeEvent("remove", "tty", "/dev/ttyUSB0", "ttyUSB0"))
    assert rec.calls == [("tty_added", "/dev/ttyUSB0"), ("tty_removed", "/dev/ttyUSB0")]


def test_net_uevents_are_a_fallback_only(loop: asyncio.AbstractEventLoop) -> None:
    rec = Recorder()
    watcher = rec.watcher(loop)  # not started: no rtnetlink socket
    watcher.device_event(FakeEvent("add", "net", None, "eth9"))
    watcher.device_event(FakeEvent("remove", "net", None, "eth9"))
    assert rec.calls == [("link_up", "eth9")]
    rec.calls.clear()
    try:
        assert watcher.start() is True  # read-only sockets in this namespace
        assert watcher.watching_links
        watcher.device_event(FakeEvent("add", "net", None, "eth9"))
        assert rec.calls == []
    finally:
        watcher.close()
    assert not watcher.watching_links and not watcher.watching_ttys


def test_a_failing_callback_does_not_stop_later_events(loop: asyncio.AbstractEventLoop) -> None:
    added: list[str] = []

    def flaky(devnode: str) -> None:
        added.append(devnode)
        if devnode.endswith("0"):
            raise RuntimeError("boom")

    watcher = UdevWatcher(loop, lambda n: None, flaky, lambda d: None)
    watcher.device_event(FakeEvent("add", "tty", "/dev/ttyACM0", "ttyACM0"))
    watcher.device_event(FakeEvent("add", "tty", "/dev/ttyACM1", "ttyACM1"))
    assert added == ["/dev/ttyACM0", "/dev/ttyACM1"]
