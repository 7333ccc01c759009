"""What a link is and reports: its state, counters, the remote's answers, the lines it drives, its
reconnect policy (plain data; no I/O), and the status dict made of them."""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import rfc2217
from ..settings import Signals

# A connection that stayed up this long counts as healthy: the back-off restarts from its shortest delay.
HEALTHY_AFTER = 10.0

# After a healthy connection is lost, the first retries wait at most this long (the network may be back in a
# moment: a switch rebooting, a cable replugged), for this long, before the back-off doubles towards retry_max.
QUICK_RETRY = 2.0
QUICK_RETRY_FOR = 60.0


class LinkState(enum.Enum):
    IDLE = "idle"  # not wanted (on-open policy and no program)
    CONNECTING = "connecting"  # TCP connect or option negotiation in progress
    CONNECTED = "connected"
    BACKOFF = "backoff"  # waiting before the next attempt


class LinkListener(Protocol):
    def link_data(self, data: bytes) -> None: ...

    def link_writable(self, writable: bool) -> None: ...

    def link_changed(self) -> None: ...


@dataclass(slots=True)
class LinkStats:
    bytes_to_remote: int = 0
    bytes_from_remote: int = 0
    connects: int = 0
    reconnects: int = 0
    last_error: str | None = None
    purged_bytes: int = 0  # arrived after a program's input flush, from before it: discarded
    lost_bytes: int = 0  # handed to the link, not acknowledged by the server when its connection died
    timeouts: int = 0  # connections ended because the server did not answer within the peer timeout
    bound_disconnects: int = 0  # connections vcom closed because the server went past a bound


@dataclass(slots=True)
class RemoteState:
    """What the server said is in force (``None``: not answered yet)."""

    com_port: bool | None = None
    signature: str | None = None
    baud: int | None = None
    data_bits: int | None = None
    parity: str | None = None
    stop_bits: str | None = None
    flow_out: str | None = None
    flow_in: str | None = None
    suspended: bool = False
    modem: Signals = field(default_factory=Signals)  # cts, dsr, dcd, ri as last notified
    line_errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LINE_ERRORS, 0))

    def settings_json(self) -> dict[str, Any]:
        return {
            "baud": self.baud,
            "data_bits": self.data_bits,
            "parity": self.parity,
            "stop_bits": self.stop_bits,
            "flow_out": self.flow_out,
            "flow_in": self.flow_in,
        }


def link_status(target: object, state: LinkState, remote: RemoteState, lines: Lines, stats: LinkStats,
                tls: dict[str, Any] | None, peer_timeout: float) -> dict[str, Any]:
    """What a link reports (``Link.status``): its state, the remote's answers, the lines it drives and its
    counters; ``tls`` is the TLS side's own status (None: plain TCP or UDP)."""
    return {
        "target": str(target),
        "state": state.value,
        "com_port": remote.com_port,
        "signature": remote.signature,
        "remote_settings": remote.settings_json(),
        "suspended": remote.suspended,
        "signals": {"dtr": lines.dtr, "rts": lines.rts,
                    **{k: getattr(remote.modem, k) for k in ("cts", "dsr", "dcd", "ri")}},
        "line_errors": dict(remote.line_errors),
        "bytes_to_remote": stats.bytes_to_remote,
        "bytes_from_remote": stats.bytes_from_remote,
        "connects": stats.connects,
        "reconnects": stats.reconnects,
        "purged_bytes": stats.purged_bytes,
        "last_error": stats.last_error,
        "tls": tls,
        "peer_timeout": peer_timeout,
        "timeouts": stats.timeouts,
        "bound_disconnects": stats.bound_disconnects,
        # The port adds what a closed program wrote and could not be sent, and shows the sum as lost_bytes.
        "lost_at_disconnect": stats.lost_bytes,
    }


# NOTIFY-LINESTATE bits counted per port (RFC 2217, SET-LINESTATE-MASK).
LINE_ERRORS: dict[str, rfc2217.LineState] = {
    "overrun": rfc2217.LineState.OVERRUN,
    "parity": rfc2217.LineState.PARITY_ERROR,
    "framing": rfc2217.LineState.FRAMING_ERROR,
    "break": rfc2217.LineState.BREAK,
}


# What we ask the server to notify.  Modem: every line and delta except trailing-edge RI, so the mask is
# never 0xFF: sredird's fixed-length parser leaks the byte after a doubled 0xFF onto the serial line.
MODEMSTATE_MASK = rfc2217.ModemState(0xFF & ~rfc2217.ModemState.TRAILING_RI)

LINESTATE_MASK = rfc2217.LineState(sum(LINE_ERRORS.values()))


@dataclass(frozen=True, slots=True)
class Lines:
    """The modem lines this side drives; ``None``: leave as the server has them."""

    dtr: bool | None = None
    rts: bool | None = None


@dataclass(frozen=True, slots=True)
class Backoff:
    initial: float = 0.25
    maximum: float = 15.0
    quick: float = QUICK_RETRY  # the longest wait right after a healthy connection was lost
    quick_for: float = QUICK_RETRY_FOR

    def delay(self, attempt: int) -> float:
        # Full jitter between half and all of the capped exponential delay.
        ceiling = min(self.maximum, self.initial * (2 ** min(attempt, 30)))
        return random.uniform(ceiling / 2, ceiling)
