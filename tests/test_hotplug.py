"""The manager's reaction to the network and to devices: a link coming up makes
ports waiting out their back-off retry at once, and a tty appearing makes a
share waiting for its unplugged device reopen it at once.

The manager runs in a network namespace and a private mount namespace the
test creates, so the events are real and reach nobody else:

- link-up: a veth pair created and brought up in that namespace (rtnetlink);
- tty-add: a udev "add" event sent into that namespace in udevd's own
  message format (a private tmpfs on /run holds the /run/udev/control that
  tells vcom udevd is there; nothing touches the machine's /run).

To tell "at once" from "at the next timer", the manager is started with its
back-off and the shares' reopen interval set to an hour: only the event can
make it act within the test's deadline.  The shared device is a symlink under
/dev/shm (a directory of the test bound there in the namespace), as udev
names devices under /dev, re-pointed at a new pty to "replug" it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from peers import HERE, PYTHON, HostileServer, NamespacedManager, PtyDevice, Vcom, wait_until

HOUR = 3600.0
# The manager, with every timer it could act on by itself pushed past the test's deadlines.  The
# patches go where the code that uses them looks (the reopen timer's own module globals, the back-off
# class itself) and fail loudly if that code moved, rather than leaving the tests green for nothing.
_MANAGER = textwrap.dedent(f"""
    import sys
    import vcom.link, vcom.share, vcom.share.limits
    reopen = vcom.share.Share._schedule_reopen
    assert reopen.__globals__.get("limits") is vcom.share.limits, "the share's reopen interval moved"
    assert "REOPEN_INTERVAL" in reopen.__code__.co_names, "the share's reopen interval moved"
    vcom.share.limits.REOPEN_INTERVAL = {HOUR}
    vcom.link.Backoff.delay = lambda self, attempt: {HOUR}
    sys.argv = ["vcom", "run", "--no-keeper"]  # the patches above live in this process
    from vcom.cli import main
    main()
""")


def _namespaces_work() -> str | None:
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c",
                            "ip link set lo up && mount -t tmpfs tmpfs /run"], capture_output=True, text=True,
                           timeout=30)
    return None if probe.returncode == 0 else f"cannot make network and mount namespaces: {probe.stderr.strip()}"


def _namespaced_manager(vcom: Vcom, devices: Path) -> NamespacedManager:
    """``vcom run`` in new network and mount namespaces, with /run private and ``devices`` as /dev/shm."""
    script = "; ".join([
        "set -e",
        "ip link set lo up",
        "mount -t tmpfs tmpfs /run",
        "mkdir -p /run/udev",
        "touch /run/udev/control",  # what the watcher looks for to listen to udevd
        f'mount --bind "{devices}" /dev/shm',
        f'exec "{sys.executable}" -c "$0"',
    ])
    return NamespacedManager(vcom, script, _MANAGER, unshare=("--net", "--mount", "--propagation", "private"))


class NamespacedHostile(HostileServer):
    """A HostileServer in the manager's network namespace."""

    def __init__(self, workdir: Path, mode: str, manager: NamespacedManager) -> None:
        super().__init__(workdir, mode)
        self.manager = manager

    def command(self) -> list[str]:
        return [*self.manager.prefix(), *super().command()]


@pytest.fixture
def namespaced(vcom: Vcom, tmp_path: Path) -> Iterator[tuple[NamespacedManager, Path]]:
    reason = _namespaces_work()
    if reason:
        pytest.skip(reason)
    devices = tmp_path / "devshm"
    devices.mkdir()
    manager = _namespaced_manager(vcom, devices)
    try:
        yield manager, devices
    finally:
        manager.stop()


def test_a_link_coming_up_ends_the_back_off(vcom: Vcom, namespaced: tuple[NamespacedManager, Path], start_peer,
                                            tmp_path: Path):
    manager, _ = namespaced
    server = start_peer(NamespacedHostile(tmp_path / "closing", "close", manager))  # hangs up at once
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{server.port}", "--connect", "always")
    # Connected once, hung up on, and now waiting out a back-off of half an hour or more.
    status = vcom.wait_status(port, lambda s: s["connects"] == 1 and s["state"] == "backoff",
                              what="the first connection lost")
    assert "lost" in status["last_error"]

    manager.inside("ip", "link", "add", "va", "type", "veth", "peer", "name", "vb")
    manager.inside("ip", "link", "set", "va", "up")
    manager.inside("ip", "link", "set", "vb", "up")  # both ends up: carrier, the interfaces are usable
    vcom.wait_status(port, lambda s: s["connects"] >= 2, what="a new attempt as the link came up")
    # The server notes an accept after vcom has seen its connect: wait for that too.
    wait_until(lambda: server.connections() >= 2, 15, "the server to see the second connection")
    assert "network interface" in (vcom.home / "namespaced.log").read_text()


def _repoint(link: Path, target: str) -> None:
    temporary = link.with_name(link.name + ".new")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target)
    os.replace(temporary, link)


def test_a_tty_appearing_reopens_its_share(vcom: Vcom, namespaced: tuple[NamespacedManager, Path],
                                          make_device: Callable[[], PtyDevice]):
    manager, devices = namespaced
    first = make_device()
    _repoint(devices / "ttyVT", first.path)
    devnode = "/dev/shm/ttyVT"  # the same directory, as the manager sees it
    vcom.ok("share", devnode, "--listen", "127.0.0.1:0", "--protocol", "tcp")
    assert vcom.status(devnode)["device_state"] == "open"

    # Unplugged: the name goes first, as udev removes it.  (Were it left pointing at first's /dev/pts/N, the
    # share's retries could open and lock the pty that a test in another worker gets under that number next.)
    _repoint(devices / "ttyVT", str(devices / "unplugged"))
    first.close()
    vcom.wait_status(devnode, lambda s: s["device_state"] == "gone", what="the device gone")
    second = make_device()
    _repoint(devices / "ttyVT", second.path)  # plugged in again, under the same name

    subprocess.run([*manager.prefix(), PYTHON, str(HERE / "peers.py"), "tty-added", devnode], check=True,
                   capture_output=True, timeout=30)
    status = vcom.wait_status(devnode, lambda s: s["device_state"] == "open", what="the share reopened at once")
    assert status["device_error"] is None
    _repoint(devices / "ttyVT", str(devices / "unplugged"))  # before the teardown closes second (see above)
