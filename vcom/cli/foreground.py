"""The commands that run in this process until stopped, rather than ask a running manager: the manager
itself (``vcom run``: what systemd starts, normally under the keeper) and ``vcom demo`` (the whole chain
in this one process)."""

from __future__ import annotations

import json
import os
import shlex
import sys
from typing import TYPE_CHECKING, Annotated

from .. import paths
from . import command
from .background import _python_env
from .common import EXIT_CONFIG, _choices, _number, fail

if TYPE_CHECKING:
    import typer  # set in this module by _typer_app(): `vcom add DEVICE TARGET` does without it (see quickargs)


def _setup_logging(level: int, json_lines: bool) -> None:
    import logging

    class JsonFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname.lower(),
                     "logger": record.name, "message": record.getMessage()}
            if record.exc_info:
                entry["exception"] = self.formatException(record.exc_info)
            return json.dumps(entry)

    handler = logging.StreamHandler()
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


@command(short_help="The manager in the foreground (systemd, debugging)")
def run(
    log_level: Annotated[str, typer.Option(metavar="LEVEL", autocompletion=_choices("debug", "info", "warning",
                                                                                    "error"),
                                           help="debug, info, warning or error")] = "info",
    log_format: Annotated[str, typer.Option(metavar="text|json", autocompletion=_choices("text", "json"),
                                            help="text, or json (one object per line, for journald and log "
                                                 "shippers)")] = "text",
    metrics: Annotated[str | None, typer.Option(
        metavar="HOST:PORT", show_default=False, help="Serve Prometheus metrics there, e.g. 127.0.0.1:9817")] = None,
    keeper: Annotated[bool, typer.Option(help="Run the manager under the keeper, which keeps the ports (and the "
                                              "programs' descriptors) alive and starts a new manager if it "
                                              "dies or stalls; --no-keeper: the ports end with the manager")] = True,
) -> None:
    """Run the manager in the foreground (for systemd and debugging); exit 78 on an unreadable config."""
    import asyncio
    import logging

    level = getattr(logging, log_level.upper(), None) if log_level.lower() in ("debug", "info", "warning",
                                                                              "error") else None
    if not isinstance(level, int):
        fail(f"--log-level {shlex.quote(log_level)} must be debug, info, warning or error")
    if log_format not in ("text", "json"):
        fail(f"--log-format {shlex.quote(log_format)} must be text or json")
    _setup_logging(level, log_format == "json")
    from ..configfile import ConfigSyntaxError
    from ..manager import Manager, ManagerError

    where = paths.resolve()
    if metrics:
        from ..metrics import MetricsError, parse_addr

        try:
            parse_addr(metrics)
        except MetricsError as exc:
            fail(f"--metrics {shlex.quote(metrics)}: {exc}")
    if keeper and "VCOM_KEEPER_FD" not in os.environ:
        # Everything the manager would refuse at once has been checked above.  The keeper is a lean
        # interpreter of its own: it imports nothing of this command's.
        # -P: the package comes from where this command found it, never from the working directory.
        manager = [sys.executable, "-P", "-m", "vcom", "run", "--no-keeper", "--log-level", log_level,
                   "--log-format", log_format, *(["--metrics", metrics] if metrics else [])]
        os.execve(sys.executable, [sys.executable, "-P", "-m", "vcom.keeper", "--", *manager], _python_env())
    try:
        asyncio.run(Manager(where, metrics=metrics).run())
    except ConfigSyntaxError as exc:
        fail(str(exc), EXIT_CONFIG)
    except (ManagerError, ValueError, OSError) as exc:
        fail(str(exc))


@command(short_help="The whole chain on this machine: simulated GPS, server, port, reader")
def demo(
    seconds: Annotated[str | None, typer.Option(metavar="S", show_default=False,
                                                help="Stop after this many seconds (default: Ctrl-C)")] = None,
) -> None:
    """Run the whole chain on this machine: simulated GPS, built-in server, virtual port, a reading program."""
    import asyncio
    import logging

    from .. import demo as demo_module

    limit = None
    if seconds is not None:
        limit = _number("--seconds", seconds)
        if limit < 0.1:
            fail(f"--seconds {shlex.quote(seconds)} must be at least 0.1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    code = asyncio.run(demo_module.run(limit))
    if code:
        fail("no position came through the virtual port", code)
