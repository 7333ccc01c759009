"""The ports table: its cells, and the widths of its columns for one frame."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from rich.console import RenderableType
from rich.text import Text

from .view import HISTORY, SIGNAL_NAMES, PortView

SPARK_LEVELS = "▁▂▃▄▅▆▇█"


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


def plan_columns(width: int, rows: list[PortView]) -> list[_Column]:
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


CELLS: dict[str, Callable[[PortView, int], RenderableType]] = {
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
