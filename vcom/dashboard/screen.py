"""The view's state: the latest ports and shares, how the user wants them arranged, and one frame of it.

Pure state, tested without a terminal: ``update(snapshot, now)`` digests one answer of ``vcom status
--json`` into one ``PortView`` per port, keeping per-port byte counters to turn two snapshots into
rates each way and a short history for a sparkline.  ``render(width, height)`` returns a rich
renderable of the visible page only, so a manager with thousands of ports costs one pass over the
ports per update and one table of a screenful per frame.  ``handle_key`` applies one key press.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .cells import CELLS, plan_columns
from .view import PortView, Traffic, port_view

SORT_KEYS = ("device", "state", "rate", "errors")
SHARES_SHOWN = 4  # the shares table is a footnote: the ports get the screen

# Lines that are not port rows: the totals line, the table's header and rule, the keys line.
_FIXED_LINES = 4
# A table's header and rule (box.SIMPLE_HEAD without edges).
_TABLE_HEAD_LINES = 2

# Sorting by state puts trouble first: a link waiting to retry, then one still trying.
_STATE_RANK = {"backoff": 0, "connecting": 1, "idle": 2, "connected": 3}


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
    _traffic: dict[str, Traffic] = field(default_factory=dict)
    _generation: int = 0
    _arranged: tuple[tuple[object, ...], list[PortView]] | None = None

    # -- input

    def update(self, snapshot: Mapping[str, Any], now: float) -> None:
        """Take a new status snapshot taken at ``now`` (seconds, any monotonic clock)."""
        traffic: dict[str, Traffic] = {}
        ports: list[PortView] = []
        for port in snapshot.get("ports") or ():
            device = str(port.get("device", "?"))
            counters = self._traffic.get(device) or Traffic()
            counters.sample(port.get("bytes_to_remote"), port.get("bytes_from_remote"), now)
            traffic[device] = counters
            ports.append(port_view(port, counters))
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
        plan = plan_columns(width, rows)
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=0)
        for column in plan:
            table.add_column(column.header, width=column.width, justify=column.justify, no_wrap=True,
                             overflow="ellipsis")
        for port in rows:
            table.add_row(*(CELLS[column.name](port, column.width) for column in plan))
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


# -- sorting -----------------------------------------------------------------------------------------------------------


def _natural(text: str) -> tuple[str | int, ...]:
    # ttyV2 before ttyV10: digits compare as numbers.  Split gives str at even and int at odd
    # positions, so two keys never compare a str with an int.
    return tuple(int(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+)", text)))


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
