"""Tests of the live status view: the view state with synthetic snapshots, and the terminal loop on a real pty."""

from __future__ import annotations

import io
import os
import re
import select
import subprocess
import sys
import tempfile
import termios
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest
from real_status import real_snapshot, with_values
from rich.console import Console

from vcom.dashboard import Dashboard, describe_settings, human_rate, lamp, run, sparkline, split_keys

PROGRAM = {"baud": 9600, "data_bits": 8, "parity": "none", "stop_bits": "1", "flow_out": "none", "flow_in": "none"}
UNANSWERED = dict.fromkeys(PROGRAM)


_REAL: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module", autouse=True)
def real_statuses(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The statuses below start from what Port.status() and Share.status() really produce (real_status.py)."""
    snapshot = real_snapshot(tmp_path_factory.mktemp("real"))
    _REAL["port"], _REAL["share"] = snapshot["ports"][0], snapshot["shares"][0]


def port(i: int, **changes: Any) -> dict[str, Any]:
    """One port as ``Port.status()`` reports it; only keys it has can be changed."""
    defaults: dict[str, Any] = {
        "device": f"/dev/ttyV{i}",
        "pty": f"/dev/pts/{i + 3}",
        "connect": "always",
        "open": i % 3 == 0,
        "settings": PROGRAM,
        "effective_settings": PROGRAM,
        "pinned": [],
        "dropped_bytes": 0,
        "target": f"rfc2217://10.0.{i // 250}.{i % 250}:4001",
        "state": ("connected", "backoff", "connecting", "idle")[i % 4],
        "com_port": True,
        "signature": None,
        "remote_settings": UNANSWERED,
        "suspended": False,
        "signals": {"dtr": True, "rts": True, "cts": False, "dsr": None, "dcd": None, "ri": None},
        "line_errors": {"overrun": 0, "parity": 0, "framing": 0, "break": 0},
        "bytes_to_remote": 0,
        "bytes_from_remote": 0,
        "connects": 1,
        "reconnects": 0,
        "last_error": None,
    }
    return with_values(_REAL["port"], **{**defaults, **changes})


def share(i: int, **changes: Any) -> dict[str, Any]:
    """One share as ``Share.status()`` reports it; only keys it has can be changed."""
    (client,) = _REAL["share"]["clients"]
    defaults: dict[str, Any] = {
        "device": f"/dev/ttyUSB{i}", "device_state": "open", "protocol": "rfc2217", "listen": f"0.0.0.0:{5000 + i}",
        "clients": [with_values(client, bytes_in=3, bytes_out=4)] * i, "device_error": None,
    }
    return with_values(_REAL["share"], **{**defaults, **changes})


def screen(dashboard: Dashboard, width: int = 160, height: int = 40) -> str:
    console = Console(record=True, width=width, height=height, file=io.StringIO(), color_system=None)
    console.print(dashboard.render(width, height))
    return console.export_text()


def rows(text: str) -> list[str]:
    """The port rows of a rendered screen."""
    return [line for line in text.splitlines() if line.startswith("/dev/ttyV")]


def devices(text: str) -> list[str]:
    return [line.split()[0] for line in rows(text)]


@pytest.fixture
def thousand() -> Dashboard:
    """1,000 ports with distinct rates, errors and states, two snapshots apart so rates are known."""
    dashboard = Dashboard()
    for t in (0.0, 1.0):
        dashboard.update({"ports": [port(i, bytes_from_remote=int(t) * ((i * 37) % 1000),
                                         line_errors={"overrun": (i * 7) % 13, "parity": 0},
                                         reconnects=i % 5)
                                    for i in range(1000)], "shares": []}, t)
    return dashboard


# -- values ------------------------------------------------------------------------------------------------------------


def test_rates_each_way_come_from_two_snapshots() -> None:
    dashboard = Dashboard()
    dashboard.update({"ports": [port(1, bytes_to_remote=100, bytes_from_remote=1000)]}, now=10.0)
    first = rows(screen(dashboard))[0]
    assert re.search(r"  -\s+-\s", first), first  # one sample: no rate yet either way
    dashboard.update({"ports": [port(1, bytes_to_remote=300, bytes_from_remote=5000)]}, now=12.0)
    view = dashboard.ports[0]
    assert (view.traffic.rate_in, view.traffic.rate_out) == (2000.0, 100.0)
    assert re.search(r"2\.0 kB/s\s+100 B/s", rows(screen(dashboard))[0])


def test_a_counter_that_goes_backwards_gives_no_rate() -> None:
    dashboard = Dashboard()
    dashboard.update({"ports": [port(1, bytes_to_remote=5000, bytes_from_remote=5000)]}, now=1.0)
    dashboard.update({"ports": [port(1, bytes_to_remote=10, bytes_from_remote=6000)]}, now=2.0)
    traffic = dashboard.ports[0].traffic
    assert traffic.rate_out is None  # the manager restarted: counters began again
    assert traffic.rate_in == 1000.0


def test_history_is_bounded_and_follows_the_port() -> None:
    dashboard = Dashboard()
    for t in range(100):
        dashboard.update({"ports": [port(1, bytes_from_remote=t * t)]}, now=float(t))
    history = dashboard.ports[0].traffic.history
    assert len(history) == 30
    assert list(history) == sorted(history)  # accelerating traffic: the newest sample is the largest
    dashboard.update({"ports": [port(2)]}, now=200.0)
    dashboard.update({"ports": [port(1)]}, now=201.0)
    assert len(dashboard.ports[0].traffic.history) == 0  # a port that went away and came back starts afresh


def test_sparkline_scales_to_its_own_maximum() -> None:
    assert sparkline([0.0, 1.0, 2.0, 4.0, 8.0], 5) == " ▂▃▅█"
    assert sparkline([5.0, 0.0, 5.0], 2) == " █"  # only the newest samples that fit
    assert sparkline([0.0, 0.0], 10) == "  "


def test_rates_are_human_readable() -> None:
    assert [human_rate(r) for r in (None, 0, 999, 1000, 1_234_567)] == ["-", "0 B/s", "999 B/s", "1.0 kB/s", "1.2 MB/s"]


def test_lamps_on_off_unknown() -> None:
    assert (lamp(True).plain, lamp(False).plain, lamp(None).plain) == ("●", "○", "?")
    assert "green" in str(lamp(True).style) and "dim" in str(lamp(False).style)
    dashboard = Dashboard()
    signals = {"dtr": True, "rts": False, "cts": None, "dsr": True, "dcd": False, "ri": None}
    dashboard.update({"ports": [port(1, signals=signals)]}, now=0.0)
    wide = screen(dashboard, width=160)
    assert "DTR RTS CTS DSR DCD RI" in wide
    assert re.search(r" ●   ○   \?   ●   ○   \? ", rows(wide)[0])
    narrow = screen(dashboard, width=100)  # the six lamps share one column
    assert "●○?●○?" in rows(narrow)[0]


def test_settings_in_force_prefer_the_remote() -> None:
    remote = {"baud": 115200, "data_bits": 7, "parity": "even", "stop_bits": "2", "flow_out": "rtscts",
              "flow_in": "rtscts"}
    dashboard = Dashboard()
    dashboard.update({"ports": [port(1, remote_settings=remote), port(2)]}, now=0.0)
    confirmed, asked = dashboard.ports
    assert (confirmed.settings, confirmed.acknowledged) == ("115200 7E2 rtscts", True)
    assert (asked.settings, asked.acknowledged) == ("9600 8N1", False)
    text = screen(dashboard)
    assert "115200 7E2 rtscts" in rows(text)[0] and "9600 8N1" in rows(text)[1]


def test_settings_describe_unknown_parts() -> None:
    assert describe_settings(UNANSWERED) is None
    assert describe_settings({"baud": 4800, "data_bits": None, "parity": None, "stop_bits": "1"}) == "4800 ??1"
    assert describe_settings({**PROGRAM, "flow_out": "xonxoff"}) == "9600 8N1 out:xonxoff,in:none"


def test_unknown_values_show_as_unknown() -> None:
    dashboard = Dashboard()
    dashboard.update({"ports": [{"device": "/dev/ttyV9", "signals": None, "state": None}]}, now=0.0)
    (row,) = rows(screen(dashboard, width=160))
    assert row.split() == ["/dev/ttyV9", "?", "?", "?", "?", "?", "?", "?", "?", "?", "-", "-", "0", "?", "?"]


def test_header_totals_and_shares_table() -> None:
    dashboard = Dashboard()
    shares = [share(i) for i in range(6)]
    ports = [port(0, line_errors={"overrun": 2, "break": 1}), port(1, last_error="connect: refused"), port(2)]
    dashboard.update({"ports": ports, "shares": shares}, now=0.0)
    text = screen(dashboard, width=160, height=30)
    header = text.splitlines()[0]
    assert "ports 3  connected 1  open 1  line errors 3  failing 1  shares 6" in header
    assert re.search(r"/dev/ttyUSB2\s+open\s+rfc2217\s+0\.0\.0\.0:5002\s+2\s+6\s+8", text)
    assert "/dev/ttyUSB4" not in text and "… 2 more" in text
    assert "connect: refused" in rows(text)[1]


def test_a_failed_fetch_keeps_the_last_data() -> None:
    dashboard = Dashboard()
    dashboard.update({"ports": [port(1)]}, now=0.0)
    dashboard.fetch_failed("the manager is not running")
    text = screen(dashboard)
    assert "status unavailable: the manager is not running" in text and devices(text) == ["/dev/ttyV1"]


# -- arrangement with 1,000 ports --------------------------------------------------------------------------------------


def test_one_page_of_a_thousand_fills_the_screen_exactly(thousand: Dashboard) -> None:
    text = screen(thousand, width=160, height=30)
    assert len(text.splitlines()) == 30
    assert thousand.page_size == 26 and len(rows(text)) == 26
    assert devices(text) == [f"/dev/ttyV{i}" for i in range(26)]  # natural order: ttyV2 before ttyV10
    assert "page 1/39  1000 shown" in text


def test_paging_clamps_at_both_ends(thousand: Dashboard) -> None:
    screen(thousand, height=30)
    thousand.handle_key("n")
    assert devices(screen(thousand, height=30))[0] == "/dev/ttyV26"
    for _ in range(50):
        thousand.handle_key("pgdn")
    last = screen(thousand, height=30)
    assert "page 39/39" in last and devices(last) == [f"/dev/ttyV{i}" for i in range(988, 1000)]
    thousand.handle_key("p")
    assert devices(screen(thousand, height=30))[0] == f"/dev/ttyV{37 * 26}"
    for _ in range(50):
        thousand.handle_key("pgup")
    assert thousand.page == 0


def test_sorting_by_each_key(thousand: Dashboard) -> None:
    thousand.handle_key("s")
    assert thousand.sort_key == "state"
    states = [p.state for p in thousand.arranged()]
    assert states == sorted(states, key=["backoff", "connecting", "idle", "connected"].index)
    thousand.handle_key("s")
    rates = [p.rate for p in thousand.arranged()]
    assert rates == sorted(rates, reverse=True) and rates[0] == 999.0  # busiest first
    text = screen(thousand, height=30)
    assert rows(text)[0].startswith("/dev/ttyV27 ")  # 27 * 37 % 1000 == 999
    thousand.handle_key("s")
    errors = [p.errors for p in thousand.arranged()]
    assert errors == sorted(errors, reverse=True) and errors[0] == 12
    thousand.handle_key("r")
    assert [p.errors for p in thousand.arranged()] == sorted(errors)
    thousand.handle_key("s")
    assert thousand.sort_key == "device"
    assert devices(screen(thousand, height=30))[0] == "/dev/ttyV999"  # still reversed


def test_filter_over_device_target_and_state(thousand: Dashboard) -> None:
    for key in "/ttyV99":
        thousand.handle_key(key)
    assert thousand.editing and "filter: ttyV99_" in screen(thousand, height=30)
    thousand.handle_key("enter")
    text = screen(thousand, height=30)
    assert devices(text) == ["/dev/ttyV99"] + [f"/dev/ttyV{i}" for i in range(990, 1000)]
    assert "11 shown" in text
    thousand.handle_key("/")
    for key in ["backspace"] * 7 + list("10.0.3.1:"):
        thousand.handle_key(key)
    thousand.handle_key("enter")
    assert [p.target for p in thousand.arranged()] == ["rfc2217://10.0.3.1:4001"]
    thousand.handle_key("esc")
    thousand.handle_key("/")
    for key in "BACKOFF":
        thousand.handle_key(key)
    assert len(thousand.arranged()) == 250 and {p.state for p in thousand.arranged()} == {"backoff"}


def test_keys_typed_into_the_filter_are_not_commands(thousand: Dashboard) -> None:
    for key in "/qsr":
        assert thousand.handle_key(key)
    assert (thousand.filter_text, thousand.sort_key, thousand.reverse) == ("qsr", "device", False)
    thousand.handle_key("esc")
    assert (thousand.filter_text, thousand.editing) == ("", False)
    assert thousand.handle_key("q") is False


def test_escape_sequences_become_key_names() -> None:
    assert split_keys("s\x1b[6~\x1b[5~q") == ["s", "pgdn", "pgup", "q"]
    assert split_keys("\x1b[A/x\r\x7f\x1b") == ["/", "x", "enter", "backspace", "esc"]  # arrows are ignored


# -- the terminal loop ---------------------------------------------------------------------------------------------


def test_run_without_a_terminal_refreshes_until_interrupted() -> None:
    calls: list[int] = []

    def fetch() -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("the manager is not running")
        if len(calls) == 4:
            raise KeyboardInterrupt
        return {"ports": [port(5)], "shares": []}

    out = io.StringIO()
    read_end, write_end = os.pipe()
    try:
        run(fetch, interval=0.001, console=Console(file=out, width=120, height=20), keys_fd=read_end)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert len(calls) == 4  # the failed fetch did not end the loop; Ctrl-C did, without an exception
    frames = out.getvalue()
    assert "status unavailable: the manager is not running" in frames  # not a terminal: frame after frame
    assert frames.count("/dev/ttyV5") == 2


_CHILD = textwrap.dedent("""
    import fcntl, sys, termios
    from rich.console import Console
    from vcom.dashboard import run

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # the pty is this session's terminal: Ctrl-C there is SIGINT here
    ports = [{"device": f"/dev/ttyV{i}", "state": "connected", "target": f"10.0.0.{i}:4001",
              "bytes_from_remote": 0, "bytes_to_remote": 0} for i in range(20)]
    run(lambda: {"ports": ports, "shares": []}, interval=0.05,
        console=Console(file=sys.stdout, force_terminal=True, width=100, height=20))
    print("RUN-RETURNED", flush=True)
""")
_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-Za-z]|[=>78])")


class _Terminal:
    """The far side of the pty a child ``run`` draws on: keys in, screen text out."""

    def __init__(self, master: int, child: subprocess.Popen[bytes]) -> None:
        self.master, self.child = master, child
        self.raw = b""
        self._mark = 0

    def wait_for(self, text: str, timeout: float = 10.0) -> None:
        """Read until ``text`` appears in what was drawn since the last ``send``."""
        deadline = time.monotonic() + timeout
        while text not in _ANSI.sub("", self.raw[self._mark:].decode(errors="replace")):
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                pytest.fail(f"{text!r} never appeared; the screen ended with {self.raw[-300:]!r}")

    def send(self, keys: bytes) -> None:
        self._mark = len(self.raw)
        os.write(self.master, keys)

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the child closed its side
            return False
        self.raw += data
        return bool(data)

    def finish(self) -> None:
        """Read to the end of the child's output (the pty stays readable until it exits)."""
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and self._read(deadline - time.monotonic()):
            pass


@pytest.fixture
def terminal() -> Iterator[tuple[_Terminal, list[Any]]]:
    """A child running ``run`` on a fresh pty; yields it with the pty's modes from before the child started."""
    master, slave = os.openpty()
    before = termios.tcgetattr(master)  # the slave's modes, read through the master
    with tempfile.TemporaryFile() as errors:
        child = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=slave, stdout=slave, stderr=errors,
                                 start_new_session=True)
        os.close(slave)
        try:
            yield _Terminal(master, child), before
        finally:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=10)
            os.close(master)
            errors.seek(0)
            leftover = errors.read().decode(errors="replace")
        assert "Traceback" not in leftover, leftover


def _ended_cleanly(term: _Terminal, before: list[Any]) -> None:
    term.finish()
    assert term.child.wait(timeout=10) == 0
    assert b"\x1b[?1049l" in term.raw  # the alternate screen was left
    assert b"RUN-RETURNED" in term.raw
    assert termios.tcgetattr(term.master) == before  # cbreak undone: canonical, echoing again


def test_run_on_a_terminal_answers_keys_and_quits_on_q(terminal: tuple[_Terminal, list[Any]]) -> None:
    term, before = terminal
    term.wait_for("page 1/2  20 shown  sort: device ↑")  # 20 rows at height 20: 16 per page
    term.send(b"n")
    term.wait_for("/dev/ttyV19")
    term.send(b"\x1b[5~")
    term.wait_for("page 1/2")
    term.send(b"sr")
    term.wait_for("sort: state ↓")
    term.send(b"/ttyV7")
    term.wait_for("filter: ttyV7_")
    term.send(b"\r")
    term.wait_for("1 shown")
    assert "/dev/ttyV17" not in _ANSI.sub("", term.raw[term._mark:].decode(errors="replace"))
    term.send(b"q")
    _ended_cleanly(term, before)


def test_run_on_a_terminal_ends_cleanly_on_ctrl_c(terminal: tuple[_Terminal, list[Any]]) -> None:
    term, before = terminal
    term.wait_for("sort: device")
    term.send(b"/ab")  # mid-edit, so the terminal is certainly in cbreak mode
    term.wait_for("filter: ab_")
    term.send(b"\x03")
    _ended_cleanly(term, before)

