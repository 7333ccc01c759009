"""What one port looks like on screen: the facts of ``vcom status --json`` digested once per update.

A snapshot's keys are those of ``Port.status()`` and ``Link.status()``; anything missing or ``None``
shows as unknown rather than failing, since a snapshot may come from an older or newer manager.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

HISTORY = 30  # samples kept per port for the sparkline
SIGNAL_NAMES = ("dtr", "rts", "cts", "dsr", "dcd", "ri")


@dataclass(slots=True)
class Traffic:
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
    traffic: Traffic
    search: str  # lower-case device, target and state, for the filter

    @property
    def rate(self) -> float | None:
        if self.traffic.rate_in is None and self.traffic.rate_out is None:
            return None
        return (self.traffic.rate_in or 0.0) + (self.traffic.rate_out or 0.0)


def port_view(port: Mapping[str, Any], traffic: Traffic) -> PortView:
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
