"""The ``vcom`` command: typer commands that talk to the manager, or read the config file when no
manager runs (``list``, ``status``, ``remove``, ``unshare``).  This module holds the command registry and
reads the command line; the commands are in one module per group (``ports``, ``status``, ``share``,
``monitor``, ``foreground``, ``wrap``, ``manager``), what they share in ``common`` and ``background``.

Every user error is one line on stderr, in vcom's words, naming the option as it was typed, and a
non-zero exit: click's usage errors are caught and reworded, values are checked here (not by the
argument parser, whose wording is its own), and everything the manager refuses comes back as one line
too.  Arguments are checked before a manager is started or anything is created.

Start-up time matters (provisioning scripts call ``vcom add`` a thousand times): the package imports
only what every command needs; each command imports the rest itself, and the command modules other than
``ports`` (whose ``add`` and ``remove`` are read without typer) are imported only with typer.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import clitext, quickargs
from .common import fail

if TYPE_CHECKING:
    import typer  # imported by _typer_app(): `vcom add DEVICE TARGET` does without it (see quickargs)

_TYPER_SETTINGS: dict[str, Any] = dict(
    add_completion=True,
    no_args_is_help=True,
    rich_markup_mode=None,  # help texts are plain: "[HOST]:PORT" and "[default: 9600]" are not markup
    pretty_exceptions_enable=False,
    help="Virtual serial ports on Linux that reach serial device servers over RFC 2217, raw TCP or UDP "
         "(vcom add), and the server side: a local serial device, or a simulated one, served to network "
         "clients over the same protocols (vcom share).",
    epilog="The config file is $VCOM_HOME/vcom.toml when VCOM_HOME is set; otherwise /etc/vcom/vcom.toml "
           "for root and $XDG_CONFIG_HOME/vcom/vcom.toml (~/.config/vcom/vcom.toml) for other users; the "
           "control socket, pid file and background log are in /run/vcom for root, else "
           "$XDG_RUNTIME_DIR/vcom, or ~/.local/state/vcom without XDG_RUNTIME_DIR. "
           "'vcom COMMAND --help' shows the options of a command.",
)

# The commands, as (typer's command() arguments, function), in the order `vcom --help` lists them.
# The annotations that tell typer their parameters are strings until typer reads them (postponed
# evaluation), so defining a command costs nothing: typer is imported and told the commands only when a
# command line needs it.
_COMMANDS: list[tuple[tuple[Any, ...], dict[str, Any], Callable[..., Any]]] = []


def command(*args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A typer command (as typer.Typer.command), registered when the typer app is built."""
    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        _COMMANDS.append((args, kwargs, function))
        return function
    return register


def command_name(args: tuple[Any, ...], function: Callable[..., Any]) -> str:
    return args[0] if args else function.__name__.replace("_", "-")


# A command module adds its commands to _COMMANDS as it is imported, so the command modules are imported
# after the registry, in the order `vcom --help` lists them: the port commands first, here (add and remove
# are read without typer, see QUICK), the others by _typer_app().  They import nothing of one another (only
# .common and .background, which define no command), so that no import registers a command earlier.
from .ports import add, remove  # noqa: E402


def _root() -> None:
    # A callback keeps `vcom COMMAND` a command group when _typer_app() is told a single command.
    pass


def _typer_app(argv: list[str]) -> typer.Typer:
    """The typer app for this command line.  typer builds the parser of every command it knows on each
    call (a sixth of a `vcom add`): when the line names a command, it is told only that one."""
    import typer

    # isort: off
    from . import status, share, monitor, foreground, wrap, manager  # noqa: F401 - they register their commands
    # isort: on

    app = typer.Typer(**_TYPER_SETTINGS)
    app.callback()(_root)
    name = argv[0] if argv and not argv[0].startswith("-") else None
    asked = [entry for entry in _COMMANDS if command_name(entry[0], entry[2]) == name]
    for args, kwargs, function in asked or _COMMANDS:
        # typer reads the annotations (typer.Argument(...)) in the command's own module, which has no typer
        # until now.
        function.__globals__["typer"] = typer
        app.command(*args, **kwargs)(function)
    return app


# Commands read without typer when their command line is plain (quickargs): the ones scripts call in
# loops.  Their shapes are checked against typer's parsers by tests/test_quickargs.py.
QUICK: dict[str, tuple[Callable[..., None], quickargs.Shape]] = {
    "add": (add, quickargs.Shape.of(add, positionals=2, spelled={"from_file": "--from"},
                                    flags={"pin_baud": True, "hangup_on_dcd": True, "emulate_baud": True,
                                           "tls_insecure": False})),
    "remove": (remove, quickargs.Shape.of(remove, positionals=1)),
}


def main() -> None:
    argv = sys.argv[1:]
    if argv and argv[0] in QUICK:
        function, shape = QUICK[argv[0]]
        given = quickargs.read(shape, argv[1:])
        if given is not None:
            function(**given)
            raise SystemExit(0)
    # click's exceptions are reached through typer (which may vendor its own click): usage errors carry
    # format_message() and exit_code; they are reworded to one line instead of a usage box.
    try:
        code = _typer_app(argv)(prog_name="vcom", standalone_mode=False)
    except Exception as exc:
        name = type(exc).__name__
        if name == "NoArgsIsHelpError":
            exc.show()  # type: ignore[attr-defined]
            raise SystemExit(2) from None
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            fail(clitext.usage_message(exc), exc.exit_code)
        if name == "Abort":
            fail("aborted", 130)
        raise
    raise SystemExit(code if isinstance(code, int) else 0)
