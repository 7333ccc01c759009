"""The program side: running programs interposed (``vcom wrap``, ``vcom wrap-all``, ``vcom preload-path``) so
that on vcom ports they get what a real UART gives.  The interposer itself is vcom.interposer."""

from __future__ import annotations

import os
import shlex
import sys
from typing import TYPE_CHECKING, Annotated

from .. import paths
from . import command
from .common import _choices, fail

if TYPE_CHECKING:
    import typer  # set in this module by _typer_app(): `vcom add DEVICE TARGET` does without it (see quickargs)


@command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             short_help="Run a program as on a real UART: exact parity, modem lines, break (static too)")
def wrap(
    program: Annotated[list[str], typer.Argument(metavar="PROGRAM [ARGS]...", show_default=False,
                                                 help="The program and its arguments")],
    preload: Annotated[bool, typer.Option(help="Use the LD_PRELOAD library instead of seccomp (dynamically "
                                               "linked programs only)")] = False,
) -> None:
    """Run PROGRAM (static or dynamic, and every process it starts) so that on vcom ports it gets what a
    UART gives: exact data bits and parity, DTR/RTS/CTS/DSR/DCD/RI, break, TIOCMIWAIT, tcdrain."""
    from ..interposer.build import BuildError, library
    from ..interposer.supervisor import WrapError, default_signals, run

    where = paths.resolve()
    interposer = paths.interposer_for_programs(where)
    env = dict(os.environ)
    env["VCOM_INTERPOSER"] = str(interposer)
    if not preload:
        try:
            raise SystemExit(run(program, env, interposer))
        except WrapError as exc:
            if not exc.unavailable:
                fail(str(exc), 127)
            print(f"vcom: {exc}; interposing with LD_PRELOAD (dynamically linked programs only)", file=sys.stderr)
    try:
        lib = library(where.cache)
    except BuildError as exc:
        fail(str(exc))
    env["LD_PRELOAD"] = " ".join(filter(None, [str(lib), env.get("LD_PRELOAD", "")]))
    default_signals()
    try:
        os.execvpe(program[0], program, env)
    except OSError as exc:
        fail(f"cannot run {program[0]}: {exc.strerror}", 127)


@command("wrap-all", short_help="Interpose every dynamically linked program on the host (root)")
def wrap_all(
    action: Annotated[str, typer.Argument(metavar="on|off|status", autocompletion=_choices("on", "off", "status"),
                                          help="on, off or status")] = "status",
) -> None:
    """List the interposer library in /etc/ld.so.preload (on), remove it (off) or say which (status), so
    that every dynamically linked program gets on vcom ports what `vcom wrap` gives, however it starts."""
    from ..interposer import wrapall
    from ..interposer.build import BuildError

    try:
        if action == "on":
            print(wrapall.enable(paths.resolve().cache))
        elif action == "off":
            print(wrapall.disable())
        elif action == "status":
            print(wrapall.status())
        else:
            fail(f"wrap-all {shlex.quote(action)}: use on, off or status", 2)
    except (wrapall.WrapAllError, BuildError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"wrap-all {action}: {exc.strerror or exc}")


@command("preload-path", short_help="Print LD_PRELOAD and VCOM_INTERPOSER for programs started elsewhere")
def preload_path() -> None:
    """Print the interposer library (for LD_PRELOAD) and the socket it needs (VCOM_INTERPOSER)."""
    from ..interposer.build import BuildError, library

    where = paths.resolve()
    try:
        print(f"LD_PRELOAD={library(where.cache)}")
    except BuildError as exc:
        fail(str(exc))
    print(f"VCOM_INTERPOSER={paths.interposer_for_programs(where)}")
