"""What a port reports: the status dict of ``vcom status``, the dashboard and the metrics.

A module of its own because reporting is no part of moving data: it reads the port's state, its link's
status and the express relay's counts, and changes nothing but the port's list of interposed programs
(forgetting those that left).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from ..interposer.server import holds_open
from . import express

if TYPE_CHECKING:
    from .port import Port


def port_status(port: Port) -> dict[str, Any]:
    """What a port reports (``Port.status``): its own state, its link's, and the express relay's counts."""
    source = port.group.settings_source()
    out: dict[str, Any] = {
        "device": port.name,
        "pty": port.pty.slave_path,
        "connect": port.group.config.connect,
        "open": port._session,
        "settings": port.settings.to_json(),
        "effective_settings": port.effective_settings.to_json(),
        "pinned": list(port._pins),
        "interposed": _interposed(port),
        "settings_exact": _settings_exact(port),
        "hangup": port.hangup,
        "hangup_on_dcd": port.config.hangup_on_dcd,
        "emulate_baud": port.config.emulate_baud,
        "hangups": port.hangups,
        "dropped_bytes": port.dropped_bytes,
        "lost_at_close": port.lost_bytes,
    }
    if len(port.group.members) > 1 or port.config.split_of:
        out["split_group"] = [m.name for m in port.group.members]
        out["settings_from"] = source.name if source else None
    out.update(port.link.status())
    out["express"] = port._relay is not None
    out["express_shared"] = isinstance(port._relay, express.Shared)
    out["express_runs"] = port.express_runs
    if port._relay is not None:
        sent, received = port._relay.counts()
        out["bytes_to_remote"] += sent
        out["bytes_from_remote"] += received
    # Lost either way: written before a close and not sent within CLOSING_WAIT, or unacknowledged
    # when the connection died (the link's lost_at_disconnect).
    out["lost_bytes"] = port.lost_bytes + port.link.stats.lost_bytes
    return out


def _interposed(port: Port) -> list[str]:
    """Kinds of interposer of the programs holding the port open now (forgetting those that left)."""
    live = {pid: kind for pid, kind in port.view.interposed.items() if holds_open(pid, port.pty.slave_path)}
    port.view.interposed = live
    return sorted(set(live.values()))


def _settings_exact(port: Port) -> bool:
    """Whether the data bits and parity sent are the program's own (it set them through the interposer)."""
    with contextlib.suppress(OSError):
        return port.view.valid(port.pty.termios())
    return False
