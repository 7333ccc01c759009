"""Fixtures for the end-to-end tests: every device, server, program fd and vcom
manager a test uses is created here and torn down here, whatever the outcome.

The helpers themselves live in ``peers.py``; this file only ties their
lifetimes to pytest's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from peers import Interactive, PeerProcess, PtyDevice, PyserialServer, Ser2net, Vcom, open_program, refusing_port

from vcom import PURE_PYTHON

P = TypeVar("P", bound=PeerProcess)

# In CI every peer is installed by .ci/run, so a skip means something is missing: fail loudly.
_STRICT = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Started in the background of a script (`make test &`), the suite has SIGINT ignored, as the shell leaves it
# for background jobs, and every process a test starts inherits that: the tests that end a command with
# Ctrl-C's signal (monitor, the live view) would wait for it in vain.  A handler is not inherited: the
# programs the tests start get the default again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under VCOM_PURE_PYTHON=1 (`make test-python`) the tests of the C extensions themselves (marked
    ``native``) are left out: everything else is the test of the Python that runs where they are not built."""
    if not PURE_PYTHON:
        return
    left = [item for item in items if item.get_closest_marker("native")]
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = [item for item in items if not item.get_closest_marker("native")]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if _STRICT and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every peer must be present: {reason}"
    if report.failed and call.when == "call":
        for title, text in _diagnostics(item):
            report.sections.append((title, text))


def _diagnostics(item: pytest.Item) -> list[tuple[str, str]]:
    """What the manager and the peers of a failed test said, while they still run: a failure seen once in
    CI can then be read from its report alone."""
    funcargs = getattr(item, "funcargs", {})
    found: list[tuple[str, str]] = []
    driver = funcargs.get("vcom")
    if isinstance(driver, Vcom):
        try:
            status = json.dumps(driver.query(), indent=1, sort_keys=True, default=str)
        except (OSError, ValueError, AssertionError) as exc:
            status = f"(no answer: {exc})"
        found.append(("vcom status at the failure", status))
        found.append(("vcom logs", driver.log_tail(200)))
    for name, value in funcargs.items():
        for part in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(part, PeerProcess):
                found.append((f"{name} log ({part.name})", part.log_tail(100)))
            elif isinstance(part, PtyDevice):
                found.append((f"{name}", part.describe()))
    found.append(("loopback TCP queues (/proc/net/tcp, tcp6: local remote state tx:rx)", _tcp_queues()))
    return found


def _tcp_queues() -> str:
    """Loopback connections with bytes queued: sent and not acknowledged (tx), or received and not read by
    the process that owns the socket (rx).  Which side holds data a test waits for."""
    lines = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                if fields[4] != "00000000:00000000":
                    lines.append(f"{fields[1]} {fields[2]} st={fields[3]} {fields[4]}")
    return "\n".join(lines) or "(none)"


@pytest.fixture
def make_device() -> Iterator[Callable[[], PtyDevice]]:
    """Factory of far-end UARTs; all are closed after the test."""
    devices: list[PtyDevice] = []

    def make() -> PtyDevice:
        devices.append(PtyDevice())
        return devices[-1]

    yield make
    for device in devices:
        device.close()


@pytest.fixture
def device(make_device: Callable[[], PtyDevice]) -> PtyDevice:
    return make_device()


@pytest.fixture
def start_peer() -> Iterator[Callable[[P], P]]:
    """Start a peer process now and stop it (SIGTERM, then SIGKILL) after the test."""
    peers: list[PeerProcess] = []

    def start(peer: P) -> P:
        peers.append(peer)
        peer.start()
        return peer

    yield start
    for peer in reversed(peers):
        peer.stop()


@pytest.fixture
def ser2net(tmp_path: Path, device: PtyDevice, start_peer: Callable[[Ser2net], Ser2net]) -> Ser2net:
    """ser2net serving ``device`` (RFC 2217 on ``.port``, raw TCP on ``.raw_port``)."""
    if shutil.which("ser2net") is None:
        pytest.skip("ser2net is not installed")
    return start_peer(Ser2net(tmp_path / "ser2net", device.path))


@pytest.fixture
def pyserial_server(tmp_path: Path, device: PtyDevice, start_peer: Callable[[PyserialServer], PyserialServer]
                    ) -> PyserialServer:
    """pyserial's RFC 2217 server (tests/pyserial_server.py) serving ``device`` on ``.port``."""
    return start_peer(PyserialServer(tmp_path / "pyserial-server", device.path))


@pytest.fixture
def vcom(tmp_path: Path) -> Iterator[Vcom]:
    """The vcom CLI with a private VCOM_HOME; no manager outlives the test.

    The home is kept short: the control socket path must fit in sun_path.
    """
    driver = Vcom(tmp_path / "h")
    try:
        yield driver
    finally:
        driver.close()


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port on 127.0.0.1 where nobody listens and nobody can start to while the test runs."""
    with refusing_port() as port:
        yield port


@pytest.fixture
def open_port() -> Iterator[Callable[[str | os.PathLike[str]], int]]:
    """Open a vcom port as a program would (raw, non-blocking); closed after the test."""
    fds: list[int] = []

    def open_(path: str | os.PathLike[str]) -> int:
        fds.append(open_program(path))
        return fds[-1]

    yield open_
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


@pytest.fixture
def interactive(vcom: Vcom) -> Iterator[Callable[..., Interactive]]:
    """Start wrapped programs that talk a JSON line per step; each is killed at the end."""
    programs: list[Interactive] = []

    def start(script: str, mode: str = "seccomp") -> Interactive:
        programs.append(Interactive(vcom, script, mode))
        return programs[-1]

    yield start
    for program in programs:
        program.close()
