"""A live, full-screen view of every port and share: ``vcom status --watch``.

The view is split in two so that most of it can be tested without a terminal:

* ``Dashboard`` is pure state.  ``update(snapshot, now)`` digests one answer of
  ``vcom status --json`` (``{"ports": [...], "shares": [...]}``) into one small
  ``PortView`` per port, keeping per-port byte counters to turn two snapshots
  into rates each way and a short history for a sparkline.  ``render(width,
  height)`` returns a rich renderable of the visible page only, so a manager
  with thousands of ports costs one pass over the ports per update and one
  table of a screenful per frame.  ``handle_key`` applies one key press.
* ``run`` is the terminal loop: one rich ``Live`` on the alternate screen,
  refreshed by hand (rich's own refresh runs in a thread; this loop is the
  only clock), with the keyboard read through ``select`` on a cbreak terminal
  so waiting for keys never delays a refresh and a refresh never swallows a key.
  When the output is not a terminal, frames are printed one after another.

Nothing here talks to the manager: the caller passes ``fetch``.  The keys of a
port's status are those of ``Port.status()`` and ``Link.status()``; anything
missing or ``None`` shows as unknown rather than failing, since a snapshot may
come from an older or newer manager.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import select
import sys
import termios
import time
import tty
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

SORT_KEYS = ("device", "state", "rate", "errors")
HISTORY = 30  # samples kept per port for the sparkline
SHARES_SHOWN = 4  # the shares table is a footnote: the ports get the screen
SIGNAL_NAMES = ("dtr", "rts", "cts", "dsr", "dcd", "ri")
SPARK_LEVELS = "▁▂▃▄▅▆▇█"

# Lines that are not port rows: the totals line, the table's header and rule, the keys line.
_FIXED_LINES = 4
# A table's header and rule (box.SIMPLE_HEAD without edges).
_TABLE_HEAD_LINES = 2

# Sorting by state puts trouble first: a link waiting to retry, then one still trying.
_STATE_RANK = {"backoff": 0, "connecting": 1, "idle": 2, "connected": 3}


# -- what one port looks like on screen ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Traffic:
    """Byte counters of one port as last seen, and the rates derived from them."""

    to_remote: int | None = None
    from_remote: int | None = None
    seen_at: float | None = None
    rate_in: float | None = None  # bytes/s from the remote to the program
    rate_out: float | None = None  # bytes/s from the program to the remote
    history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))

    def sample(self, to_remote: int | None, from_remote: int | None, now: float) -> None:
        if self.seen_at is not None and now <= self.seen_at:
            return  # the same moment again: nothing to divide by, keep the earlier counters as the base
        before_to, before_from, before_at = self.to_remote, self.from_remote, self.seen_at
        self.to_remote, self.from_remote, self.seen_at = to_remote, from_remote, now
        if before_at is None:
            return  # first sight: a rate needs two samples
        self.rate_out = _rate(before_to, to_remote, now - before_at)
        self.rate_in = _rate(before_from, from_remote, now - before_at)
        if self.rate_in is not None or self.rate_out is not None:
            self.history.append((self.rate_in or 0.0) + (self.rate_out or 0.0))


def _rate(before: int | None, after: int | None, elapsed: float) -> float | None:
    # A counter that went backwards belongs to a restarted manager: no rate from that pair.
    if before is None or after is None or after < before:
        return None
    return (after - before) / elapsed


@dataclass(frozen=True, slots=True)
class PortView:
    """The displayed facts of one port, derived once per update."""

    device: str
    state: str | None
    target: str | None
    open: bool | None
    settings: str | None  # settings in force, as text
    acknowledged: bool  # True: the remote confirmed ``settings``; False: only what the program asked for
    signals: tuple[bool | None, ...]  # in SIGNAL_NAMES order
    errors: int  # line errors reported by the remote (overrun, parity, framing, break)
    connects: int | None  # connections made (each open of an on-open port makes one)
    reconnects: int | None  # of those, the ones made after a connection was lost
    last_error: str | None
    traffic: _Traffic
    search: str  # lower-case device, target and state, for the filter

    @property
    def rate(self) -> float | None:
        if self.traffic.rate_in is None and self.traffic.rate_out is None:
            return None
        return (self.traffic.rate_in or 0.0) + (self.traffic.rate_out or 0.0)


def _port_view(port: Mapping[str, Any], traffic: _Traffic) -> PortView:
    device = str(port.get("device", "?"))
    state = _text_or_none(port.get("state"))
    target = _text_or_none(port.get("target"))
    remote = describe_settings(port.get("remote_settings"))
    settings = remote if remote is not None else describe_settings(port.get("settings"))
    signals = port.get("signals") or {}
    errors = port.get("line_errors") or {}
    return PortView(
        device=device,
        state=state,
        target=target,
        open=port.get("open"),
        settings=settings,
        acknowledged=remote is not None,
        signals=tuple(_bool_or_none(signals.get(name)) for name in SIGNAL_NAMES),
        errors=sum(v for v in errors.values() if isinstance(v, int)),
        connects=port.get("connects"),
        reconnects=port.get("reconnects"),
        last_error=_text_or_none(port.get("last_error")),
        traffic=traffic,
        search=" ".join(x for x in (device, target, state) if x).lower(),
    )


def describe_settings(settings: Mapping[str, Any] | None) -> str | None:
    """``"19200 8N2 rtscts"`` (as ``LineSettings.describe``); ``?`` for each unknown part, ``None`` if all are."""
    if not settings or all(v is None for v in settings.values()):
        return None

    def part(key: str) -> str:
        value = settings.get(key)
        return "?" if value is None else str(value)

    parity = part("parity")
    frame = f"{part('data_bits')}{parity[0].upper()}{part('stop_bits')}"
    flow_out, flow_in = settings.get("flow_out") or "none", settings.get("flow_in") or "none"
    if flow_out == flow_in:
        flow = "" if flow_out == "none" else flow_out
    else:
        flow = f"out:{flow_out},in:{flow_in}"
    return f"{part('baud')} {frame}" + (f" {flow}" if flow else "")


def _text_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def _bool_or_none(value: object) -> bool | None:
    return None if value is None else bool(value)


# -- small renderers ---------------------------------------------------------------------------------------------------


def lamp(value: bool | None) -> Text:
    """One modem line: a green dot when on, a dim ring when off, ``?`` when never reported."""
    if value is None:
        return Text("?", style="yellow")
    return Text("●", style="bold green") if value else Text("○", style="dim")


def sparkline(values: Iterable[float], width: int) -> str:
    """The last ``width`` samples, scaled to their own maximum; silence is a blank."""
    samples = list(values)[-width:] if width > 0 else []
    top = max(samples, default=0.0)
    if top <= 0:
        return " " * len(samples)
    last = len(SPARK_LEVELS) - 1
    return "".join(" " if v <= 0 else SPARK_LEVELS[min(last, int(v / top * last + 0.5))] for v in samples)


def human_rate(rate: float | None) -> str:
    if rate is None:
        return "-"
    for unit in ("B/s", "kB/s", "MB/s"):
        if rate < 1000 or unit == "MB/s":
            return f"{rate:.0f} {unit}" if unit == "B/s" else f"{rate:.1f} {unit}"
        rate /= 1000
    raise AssertionError("unreachable")


def _state_text(state: str | None) -> Text:
    style = {"connected": "green", "connecting": "yellow", "backoff": "red", "idle": "dim"}.get(state or "", "")
    return Text(state or "?", style=style)


def _natural(text: str) -> tuple[str | int, ...]:
    # ttyV2 before ttyV10: digits compare as numbers.  Split gives str at even and int at odd
    # positions, so two keys never compare a str with an int.
    return tuple(int(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+)", text)))


# -- the view state ----------------------------------------------------------------------------------------------------


@dataclass
class Dashboard:
    """What the screen shows: the latest ports and shares, and how the user wants them arranged."""

    sort_key: str = "device"
    reverse: bool = False
    filter_text: str = ""
    page: int = 0
    page_size: int = 20  # set from the terminal height by every render
    editing: bool = False  # the filter is being typed
    ports: list[PortView] = field(default_factory=list)
    shares: list[Mapping[str, Any]] = field(default_factory=list)
    fetch_error: str | None = None
    totals: str = ""  # the header's counts, taken once per update rather than once per frame
    _traffic: dict[str, _Traffic] = field(default_factory=dict)
    _generation: int = 0
    _arranged: tuple[tuple[object, ...], list[PortView]] | None = None

    # -- input

    def update(self, snapshot: Mapping[str, Any], now: float) -> None:
        """Take a new status snapshot taken at ``now`` (seconds, any monotonic clock)."""
        traffic: dict[str, _Traffic] = {}
        ports: list[PortView] = []
        for port in snapshot.get("ports") or ():
            device = str(port.get("device", "?"))
            counters = self._traffic.get(device) or _Traffic()
            counters.sample(port.get("bytes_to_remote"), port.get("bytes_from_remote"), now)
            traffic[device] = counters
            ports.append(_port_view(port, counters))
        self._traffic = traffic  # ports that went away take their history with them
        self.ports = ports
        self.shares = list(snapshot.get("shares") or ())
        self.totals = _totals(ports, len(self.shares))
        self.fetch_error = None
        self._generation += 1

    def fetch_failed(self, message: str) -> None:
        """Keep showing the last snapshot, with why it is not being refreshed."""
        self.fetch_error = message

    def handle_key(self, key: str) -> bool:
        """Apply one key (a character, or ``enter``/``backspace``/``esc``/``pgup``/``pgdn``); False means quit."""
        if self.editing:
            self._edit_filter(key)
            return True
        if key == "q":
            return False
        if key == "s":
            self.sort_key = SORT_KEYS[(SORT_KEYS.index(self.sort_key) + 1) % len(SORT_KEYS)]
            self.page = 0
        elif key == "r":
            self.reverse = not self.reverse
        elif key == "/":
            self.editing = True
        elif key in ("n", "pgdn", " "):
            self.page += 1  # clamped when rendered: the number of pages depends on the filter and height
        elif key in ("p", "pgup"):
            self.page = max(0, self.page - 1)
        elif key == "esc":
            self.filter_text, self.page = "", 0
        return True

    def _edit_filter(self, key: str) -> None:
        if key == "enter":
            self.editing = False
        elif key == "esc":
            self.editing, self.filter_text = False, ""
        elif key == "backspace":
            self.filter_text = self.filter_text[:-1]
        elif len(key) == 1 and key.isprintable():
            self.filter_text += key
        self.page = 0

    # -- arrangement

    def arranged(self) -> list[PortView]:
        """Ports that pass the filter, in display order; recomputed only when the data or the choice changed."""
        choice = (self._generation, self.sort_key, self.reverse, self.filter_text)
        if self._arranged is not None and self._arranged[0] == choice:
            return self._arranged[1]
        needle = self.filter_text.lower()
        ports = [p for p in self.ports if needle in p.search] if needle else list(self.ports)
        ports.sort(key=_SORTERS[self.sort_key], reverse=self.reverse)
        self._arranged = (choice, ports)
        return ports

    def page_count(self) -> int:
        return max(1, -(-len(self.arranged()) // self.page_size))

    def visible(self) -> list[PortView]:
        """The ports on the current page (the page is clamped to the last one)."""
        self.page = min(self.page, self.page_count() - 1)
        start = self.page * self.page_size
        return self.arranged()[start : start + self.page_size]

    # -- output

    def render(self, width: int, height: int) -> RenderableType:
        """The whole screen for a terminal of ``width`` x ``height``; only the visible page is built."""
        shares_lines = self._shares_lines()
        self.page_size = max(1, height - _FIXED_LINES - shares_lines)
        rows = self.visible()
        parts: list[RenderableType] = [self._header(), self._ports_table(rows, width)]
        if shares_lines:
            parts.append(self._shares_table())
        parts.append(self._footer())
        return Group(*parts)

    def _header(self) -> Text:
        text = Text.assemble(("vcom", "bold"), "  ", self.totals or _totals([], 0))
        if self.fetch_error:
            text.append(f"  status unavailable: {self.fetch_error}", style="bold red")
        text.no_wrap, text.overflow = True, "ellipsis"
        return text

    def _footer(self) -> Text:
        shown = len(self.arranged())
        arrow = "↓" if self.reverse else "↑"
        where = f"page {self.page + 1}/{self.page_count()}  {shown} shown  sort: {self.sort_key} {arrow}"
        if self.editing:
            text = Text.assemble(("filter: ", "bold"), (self.filter_text + "_", "reverse"),
                                 "  Enter done  Esc clear  ", where)
        else:
            keys = "q quit  s sort  r reverse  / filter  n/p page"
            text = Text.assemble((keys, "dim"), "  ", where)
            if self.filter_text:
                text.append(f"  filter: {self.filter_text}", style="bold")
        text.no_wrap, text.overflow = True, "ellipsis"
        return text

    def _ports_table(self, rows: list[PortView], width: int) -> Table:
        plan = _plan_columns(width, rows)
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=0)
        for column in plan:
            table.add_column(column.header, width=column.width, justify=column.justify, no_wrap=True,
                             overflow="ellipsis")
        for port in rows:
            table.add_row(*(_CELLS[column.name](port, column.width) for column in plan))
        return table

    def _shares_lines(self) -> int:
        if not self.shares:
            return 0
        more = 1 if len(self.shares) > SHARES_SHOWN else 0
        return _TABLE_HEAD_LINES + min(len(self.shares), SHARES_SHOWN) + more

    def _shares_table(self) -> Table:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
        for name in ("share", "state", "protocol", "listen", "clients", "in", "out", "error"):
            table.add_column(name, no_wrap=True, overflow="ellipsis")
        for share in self.shares[:SHARES_SHOWN]:
            clients = share.get("clients") or []
            table.add_row(
                str(share.get("device", "?")),
                str(share.get("device_state") or "?"),
                str(share.get("protocol") or "?"),
                str(share.get("listen") or "?"),
                str(len(clients)),
                str(sum(c.get("bytes_in", 0) or 0 for c in clients)),
                str(sum(c.get("bytes_out", 0) or 0 for c in clients)),
                Text(str(share.get("device_error") or ""), style="red"),
            )
        if len(self.shares) > SHARES_SHOWN:
            table.add_row(Text(f"… {len(self.shares) - SHARES_SHOWN} more", style="dim"))
        return table


def _totals(ports: list[PortView], shares: int) -> str:
    connected = sum(1 for p in ports if p.state == "connected")
    opened = sum(1 for p in ports if p.open)
    errors = sum(p.errors for p in ports)
    # Failing: a port whose last attempt went wrong and that is not connected now.
    failing = sum(1 for p in ports if p.last_error and p.state != "connected")
    return (f"ports {len(ports)}  connected {connected}  open {opened}  line errors {errors}"
            f"  failing {failing}  shares {shares}")


# -- the ports table's columns -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Column:
    name: str
    header: str
    width: int
    justify: Literal["left", "right", "center"] = "left"


# Columns whose width never changes; each is followed by a one-space divider.
_FIXED = {"state": 10, "in": 10, "out": 10, "err": 5, "conn": 5, "rc": 4}
# Columns that share what is left: (name, narrowest useful width, widest wanted).  Room goes to them in this
# order, so on a narrow terminal the last error and the sparkline give way first; the last error gets a
# readable start before the sparkline and the rest of its text after it.
_FLEX = (
    ("device", 8, 24),
    ("settings", 8, 20),
    ("remote", 8, 28),
    ("last error", 0, 24),
    ("activity", 0, HISTORY),
    ("last error", 0, 60),
)
# Below this width the six lamps share one column, in the order DTR RTS CTS DSR DCD RI.
_WIDE_LAMPS = 130


def _plan_columns(width: int, rows: list[PortView]) -> list[_Column]:
    """Widths for this frame: fixed columns first, then the flexible ones by priority up to what the page needs."""
    wide = width >= _WIDE_LAMPS
    lamps = [_Column(n, n.upper(), 3, "center") for n in SIGNAL_NAMES] if wide else [_Column("lines", "lines", 6)]
    fixed_count = len(_FIXED) + len(lamps)
    used = sum(_FIXED.values()) + sum(c.width for c in lamps) + fixed_count  # each with its divider
    wants = {
        "device": max((len(p.device) for p in rows), default=0),
        "settings": max((len(p.settings or "?") for p in rows), default=0),
        "remote": max((len(p.target or "?") for p in rows), default=0),
        "last error": max((len(p.last_error or "") for p in rows), default=0),
        "activity": max((len(p.traffic.history) for p in rows), default=0),
    }
    widths = {name: least for name, least, _ in _FLEX[:3]} | {"last error": 0, "activity": 0}
    room = width - used - sum(widths.values()) - sum(1 for w in widths.values() if w)
    for name, least, most in _FLEX:
        want = max(least, min(most, max(wants[name], len(name))))
        extra = max(0, min(want - widths[name], room - (0 if widths[name] else 1)))
        if extra and widths[name] + extra >= len(name):  # a column too narrow for its own title stays out
            room -= extra + (0 if widths[name] else 1)
            widths[name] += extra
    columns = [
        _Column("device", "device", widths["device"]),
        _Column("state", "state", _FIXED["state"]),
        _Column("remote", "remote", widths["remote"]),
        _Column("settings", "settings", widths["settings"]),
        *lamps,
        _Column("in", "in", _FIXED["in"], "right"),
        _Column("out", "out", _FIXED["out"], "right"),
        _Column("activity", "activity", widths["activity"]),
        _Column("err", "err", _FIXED["err"], "right"),
        _Column("conn", "conn", _FIXED["conn"], "right"),
        _Column("rc", "rc", _FIXED["rc"], "right"),
        _Column("last error", "last error", widths["last error"]),
    ]
    return [c for c in columns if c.width]


def _settings_cell(port: PortView, width: int) -> Text:
    text = Text(port.settings or "?")
    if not port.acknowledged:
        text.stylize("dim italic")  # what the program asked for: the remote has not confirmed it
    return text


def _lamps_cell(port: PortView, width: int) -> Text:
    return Text("").join(lamp(value) for value in port.signals)


def _lamp_cell(index: int) -> Callable[[PortView, int], RenderableType]:
    return lambda port, width: lamp(port.signals[index])


_CELLS: dict[str, Callable[[PortView, int], RenderableType]] = {
    "device": lambda p, w: Text(p.device, style="bold" if p.open else ""),
    "state": lambda p, w: _state_text(p.state),
    "remote": lambda p, w: p.target or "?",
    "settings": _settings_cell,
    "lines": _lamps_cell,
    **{name: _lamp_cell(i) for i, name in enumerate(SIGNAL_NAMES)},
    "in": lambda p, w: human_rate(p.traffic.rate_in),
    "out": lambda p, w: human_rate(p.traffic.rate_out),
    "activity": lambda p, w: Text(sparkline(p.traffic.history, w), style="cyan"),
    "err": lambda p, w: Text(str(p.errors), style="red" if p.errors else "dim"),
    "conn": lambda p, w: "?" if p.connects is None else str(p.connects),
    "rc": lambda p, w: "?" if p.reconnects is None else Text(str(p.reconnects), style="yellow" if p.reconnects else ""),
    "last error": lambda p, w: Text(p.last_error or "", style="red"),
}


def _by_device(p: PortView) -> tuple[object, ...]:
    return (_natural(p.device),)


def _by_state(p: PortView) -> tuple[object, ...]:
    return (_STATE_RANK.get(p.state or "", len(_STATE_RANK)), _natural(p.device))


def _by_rate(p: PortView) -> tuple[object, ...]:
    rate = p.rate
    return (-(rate if rate is not None else -1.0), _natural(p.device))  # busiest first; unknown last


def _by_errors(p: PortView) -> tuple[object, ...]:
    return (-p.errors, -(p.reconnects or 0), p.last_error is None, _natural(p.device))


_SORTERS: dict[str, Callable[[PortView], tuple[object, ...]]] = {
    "device": _by_device,
    "state": _by_state,
    "rate": _by_rate,
    "errors": _by_errors,
}


# -- the keyboard ------------------------------------------------------------------------------------------------------

_SEQUENCES = {"\x1b[5~": "pgup", "\x1b[6~": "pgdn"}
_SINGLE = {"\r": "enter", "\n": "enter", "\x7f": "backspace", "\x08": "backspace", "\x1b": "esc"}
_CSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


class KeyReader:
    """Turns bytes from a cbreak terminal into key names, waiting at most a given time."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def read(self, timeout: float) -> list[str]:
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return []
        data = os.read(self.fd, 1024)
        if not data:
            raise EOFError("the terminal went away")
        return split_keys(self._decoder.decode(data))


def split_keys(text: str) -> list[str]:
    """``"s\\x1b[6~q"`` -> ``["s", "pgdn", "q"]``; unknown escape sequences (arrows, F-keys) are dropped."""
    keys: list[str] = []
    i = 0
    while i < len(text):
        match = _CSI.match(text, i)
        if match:
            if match.group() in _SEQUENCES:
                keys.append(_SEQUENCES[match.group()])
            i = match.end()
            continue
        keys.append(_SINGLE.get(text[i], text[i]))
        i += 1
    return keys


@contextlib.contextmanager
def cbreak(fd: int) -> Iterator[None]:
    """Keys arrive one at a time and unechoed; the saved modes come back however the block ends."""
    saved = termios.tcgetattr(fd)
    try:
        # TCSANOW rather than setcbreak's default TCSAFLUSH: keys typed before the view came up are kept.
        tty.setcbreak(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


# -- the loop ----------------------------------------------------------------------------------------------------------


def run(
    fetch: Callable[[], Mapping[str, Any]],
    interval: float = 1.0,
    console: Console | None = None,
    *,
    keys_fd: int | None = None,
) -> None:
    """Show ``fetch()`` every ``interval`` seconds until ``q`` or Ctrl-C.

    Keys are read from ``keys_fd`` (default: standard input) when it is a terminal; otherwise the view just
    refreshes until interrupted.  An exception from ``fetch`` is shown on screen and the next interval retries.
    """
    console = console or Console()
    fd = _stdin_fd() if keys_fd is None else keys_fd
    keys = fd is not None and os.isatty(fd)
    try:
        with cbreak(fd) if keys and fd is not None else contextlib.nullcontext(), _display(console) as draw:
            reader = KeyReader(fd) if keys and fd is not None else None
            _loop(fetch, interval, console, draw, Dashboard(), reader)
    except (KeyboardInterrupt, EOFError):
        pass  # Ctrl-C is the other way out; the context managers already put the terminal back


@contextlib.contextmanager
def _display(console: Console) -> Iterator[Callable[[RenderableType], None]]:
    """How a frame reaches the screen: redrawn in place on a terminal, one after another anywhere else."""
    if not console.is_terminal:
        yield console.print
        return
    # Refreshed by hand: rich's automatic refresh runs in a thread and would race the key handling.
    with Live(console=console, screen=True, auto_refresh=False, redirect_stdout=False, redirect_stderr=False) as live:
        yield lambda frame: live.update(frame, refresh=True)


def _loop(
    fetch: Callable[[], Mapping[str, Any]],
    interval: float,
    console: Console,
    draw: Callable[[RenderableType], None],
    dashboard: Dashboard,
    reader: KeyReader | None,
) -> None:
    next_fetch = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= next_fetch:
            _refresh(fetch, dashboard, now)
            next_fetch = now + interval
        draw(dashboard.render(console.width, console.height))
        wait = next_fetch - time.monotonic()
        if reader is None:
            time.sleep(max(0.0, wait))
            continue
        for key in reader.read(wait):
            if not dashboard.handle_key(key):
                return


def _refresh(fetch: Callable[[], Mapping[str, Any]], dashboard: Dashboard, now: float) -> None:
    try:
        snapshot = fetch()
    except Exception as exc:  # the manager restarting must not end the view: show it and retry
        dashboard.fetch_failed(str(exc) or type(exc).__name__)
        return
    dashboard.update(snapshot, now)


def _stdin_fd() -> int | None:
    try:
        return sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        return None  # no stdin at all, or one without a descriptor
