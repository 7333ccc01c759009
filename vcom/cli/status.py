"""``vcom status``: what the manager reports of every port and share, once or as a live view; with no
manager running, what the config file would start, and a distinct exit code (3) for scripts and units."""

from __future__ import annotations

import json
import os
import shlex
import sys
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

from .. import clitext, control, paths
from . import command
from .common import EXIT_NOT_RUNNING, _load_config, _number, complete_devices, fail, manager_paths

if TYPE_CHECKING:
    import typer  # set in this module by _typer_app(): `vcom add DEVICE TARGET` does without it (see quickargs)


@command(short_help="State, settings in force, traffic and errors; --watch: live view")
def status(
    device: Annotated[str | None, typer.Argument(
        metavar="[DEVICE]", show_default=False, help="One port or share (default: all)",
        autocompletion=complete_devices)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
    watch: Annotated[bool, typer.Option(help="Live full-screen view of every port (q quits, s sorts, / filters)")] = (
        False),
    interval: Annotated[str, typer.Option(metavar="S", help="Refresh interval of --watch, seconds")] = "1",
) -> None:
    """Show state, remote, settings in force, traffic and errors of the ports (exit 3: no manager runs)."""
    where = manager_paths()
    if watch:
        from .. import dashboard

        seconds = _number("--interval", interval)
        if seconds < 0.1:
            fail(f"--interval {shlex.quote(interval)} must be at least 0.1 seconds")

        def fetch() -> dict[str, Any]:
            answer = control.request(where.socket, "status", timeout=5)  # ControlError: shown, retried
            if not answer.get("ok"):
                raise control.ControlError(str(answer.get("error")))
            return answer

        dashboard.run(fetch, interval=seconds)
        return
    if device and not device.lower().startswith("sim:"):
        device = os.path.abspath(device)
    try:
        answer = control.request(where.socket, "status", device=device)
    except control.NotRunning as exc:
        _status_without_manager(where, str(exc), as_json)
    except control.ControlError as exc:
        fail(str(exc))
    if not answer.get("ok"):
        fail(str(answer.get("error", "the manager refused the request")))
    if device:
        data: Any = answer.get("port") or answer.get("share")
    else:
        data = {"ports": answer["ports"], "shares": answer["shares"], "problems": answer.get("problems", [])}
    if as_json:
        print(json.dumps(data, indent=2))
        return
    if device:
        print(clitext.format_status(data) if "port" in answer else clitext.format_share(data))
        return
    for port in data["ports"]:
        print(clitext.format_status(port))
    for item in data["shares"]:
        print(clitext.format_share(item))
    for problem in data["problems"]:
        print(f"unusable entry, skipped: {problem.get('message')}")


def _status_without_manager(where: paths.Paths, reason: str, as_json: bool) -> NoReturn:
    loaded = _load_config(where)
    stale = [p.device for p in loaded.ports if os.path.islink(p.device)]
    if as_json:
        print(json.dumps({"manager": {"running": False}, "config": str(where.config),
                          "ports": [{**p.to_json(), "state": "not running"} for p in loaded.ports],
                          "shares": [{**s.to_json(), "device_state": "not running"} for s in loaded.shares],
                          "problems": [p.to_json() for p in loaded.problems],
                          "stale_links": stale}, indent=2))
        raise SystemExit(EXIT_NOT_RUNNING)
    counted = f"{len(loaded.ports)} port(s) and {len(loaded.shares)} share(s)"
    lines = [f"vcom: {reason}; {where.config} configures {counted} (vcom list shows them). "
             "Start the manager with 'vcom run' or 'systemctl start vcom'."]
    if not paths.is_system(where) and paths.system_refuses():
        lines.append(f"vcom: the system manager runs, but its control socket {paths.system().socket} admits only "
                     f"root and members of group '{control.CONTROL_GROUP}' (one just added to it must log in again, "
                     f"or run 'newgrp {control.CONTROL_GROUP}')")
    if stale:
        lines.append(f"vcom: {', '.join(stale)} still lead to the pty of a manager that stopped without "
                     "cleaning up; the next start of the manager replaces them")
    lines += [f"vcom: unusable entry, skipped: {problem}" for problem in loaded.problems]
    print("\n".join(lines), file=sys.stderr)
    raise SystemExit(EXIT_NOT_RUNNING)
