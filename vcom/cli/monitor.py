"""``vcom monitor``: a port's traffic as the manager streams it, for a person (hex and ASCII) or a pipe
(JSON lines)."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Annotated

from .. import clitext, control
from . import command
from .common import _required, complete_devices, fail, manager_paths

if TYPE_CHECKING:
    import typer  # set in this module by _typer_app(): `vcom add DEVICE TARGET` does without it (see quickargs)


@command(short_help="A port's traffic both ways, with settings and signal events")
def monitor(
    device: Annotated[str | None, typer.Argument(metavar="DEVICE", show_default=False, help="The vcom port to watch",
                                                 autocompletion=complete_devices)] = None,
    raw: Annotated[bool, typer.Option(help="One JSON object per event, for piping")] = False,
    output: Annotated[str | None, typer.Option(metavar="FILE", show_default=False,
                                               help="Append to this file instead of the terminal")] = None,
) -> None:
    """Show a port's traffic (hex and ASCII, both ways) with settings, signal, purge and break events in order."""
    device = _required(device, "DEVICE", "vcom monitor DEVICE")
    where = manager_paths()
    try:
        out = open(output, "a", encoding="utf-8") if output else sys.stdout  # noqa: SIM115 - closed below
    except OSError as exc:
        fail(f"--output {output}: {(exc.strerror or str(exc)).lower()}")
    try:
        for event in control.stream(where.socket, "monitor", device=os.path.abspath(device)):
            lines = [json.dumps(event)] if raw else clitext.format_event(event)
            out.write("".join(line + "\n" for line in lines))
            out.flush()
    except control.ControlError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass
    finally:
        if output:
            out.close()
