"""What the command modules share, so that every refusal reads alike: one line on stderr in vcom's words,
naming the option as it was typed, with the exit code the command documents; options converted from their
text, the config file read, a request to the manager, and shell completion.  No command is defined here."""

from __future__ import annotations

import functools
import os
import shlex
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from .. import control, paths

if TYPE_CHECKING:
    from ..config import ConfigError
    from ..configfile import Loaded

EXIT_NOT_RUNNING = 3  # `vcom status` with no manager, as `systemctl status` of a stopped unit
EXIT_CONFIG = 78  # EX_CONFIG (sysexits.h): the unit's RestartPreventExitStatus= names it

# Settings (config keys) as the command line spells them.
_OPTION_NAMES = {"device": "DEVICE", "target": "TARGET", "listen_host": "--listen", "listen_port": "--listen"}
_WHOLE = ("baud", "data_bits", "client_buffer", "max_clients", "max_clients_per_address")
_SECONDS = ("linger", "retry_max", "peer_timeout")
_FILES = ("split_of", "tls_ca", "tls_cert", "tls_key", "tls_client_ca")  # paths, made absolute for the manager


def option_name(key: str | None) -> str:
    if key is None:
        return ""
    return _OPTION_NAMES.get(key, "--" + key.replace("_", "-"))


@functools.cache
def manager_paths() -> paths.Paths:
    """The files of the manager this command addresses (:func:`vcom.paths.for_commands`: the user's own, or
    the system manager for a member of group vcom who runs none), looked for once per command."""
    return paths.for_commands()


def for_another_user(where: paths.Paths) -> bool:
    """Whether the manager at ``where`` is the system's (root) and this command a user's: a member of group
    vcom, for whom it makes ports the member's, checks what it may write itself, and holds a file that
    is root's."""
    return os.geteuid() != 0 and paths.is_system(where)


def complete_devices(incomplete: str) -> list[str]:
    """Shell completion of port and share devices, from the config file (no manager needed)."""
    try:
        loaded = _configured(manager_paths())
    except (OSError, ValueError):
        return []
    names = [p.device for p in loaded.ports] + [s.device for s in loaded.shares]
    return [name for name in names if name.startswith(incomplete)]


def _choices(*values: str):  # noqa: ANN202 - a completion callback for typer
    def complete(incomplete: str) -> list[str]:
        return [v for v in values if v.startswith(incomplete)]

    return complete


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"vcom: {message}", file=sys.stderr)
    raise SystemExit(code)


# What was typed for each option, so that a refusal shows it as typed ("-1", not "-1.0").
_typed: dict[str, str] = {}


def fail_option(exc: ConfigError) -> NoReturn:
    """A refused setting, named as on the command line (``--retry-max``, not ``retry_max``), as are the
    settings its reason mentions."""
    if exc.key in _typed:
        fail(f"{option_name(exc.key)} {shlex.quote(_typed[exc.key])} {exc.spelled(option_name)}")
    fail(exc.named(option_name(exc.key), option_name) if exc.key else exc.spelled(option_name))


def _ask(cmd: str, **args: Any) -> dict[str, Any]:
    where = manager_paths()
    try:
        answer = control.request(where.socket, cmd, **args)
    except control.ControlError as exc:
        fail(str(exc))
    if not answer.get("ok"):
        fail(str(answer.get("error", "the manager refused the request")))
    return answer


def _required(value: str | None, name: str, usage: str) -> str:
    if value is None:
        fail(f"missing {name}: {usage}", 2)
    return value


def _whole(option: str, text: str) -> int:
    try:
        return int(text.strip(), 10)
    except ValueError:
        fail(f"{option} {shlex.quote(text)} must be a whole number")


def _number(option: str, text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        fail(f"{option} {shlex.quote(text)} must be a number")
    if value != value or value in (float("inf"), float("-inf")):
        fail(f"{option} {shlex.quote(text)} must be a finite number")
    return value


def _configured(where: paths.Paths) -> Loaded:
    """The ports and shares configured for the manager at ``where``; ConfigSyntaxError: its file is unusable."""
    from ..configfile import load

    if for_another_user(where):
        # The system manager's file is root's (and may be for root's eyes only): its manager says what it holds.
        loaded = _config_from_manager(where)
        if loaded is not None:
            return loaded
    return load(where.config)


def _load_config(where: paths.Paths) -> Loaded:
    from ..configfile import ConfigSyntaxError

    try:
        return _configured(where)
    except ConfigSyntaxError as exc:
        fail(str(exc))


def _converted(**given: Any) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key, value in given.items():
        if value is None:
            continue
        if isinstance(value, str):
            _typed[key] = value
        if key in _WHOLE:
            value = _whole(option_name(key), value)
        elif key in _SECONDS:
            value = _number(option_name(key), value)
        elif key in _FILES:
            value = os.path.abspath(value)
        options[key] = value
    return options


def _check_tls_files(options: Any, role: str, in_file: str = "") -> None:
    """TLS files that cannot be used are refused here, naming the option as typed.  A file this user may not
    read is left to the manager, which may run as another user (root) that can."""
    if options is None:
        return
    from ..config import ConfigError
    from ..tls import client_context, server_context

    try:
        client_context(options) if role == "client" else server_context(options)
    except ConfigError as exc:
        if "permission denied" in exc.reason:
            return
        if in_file:
            fail(f"{in_file}{exc}")
        fail_option(exc)


def _config_from_manager(where: paths.Paths) -> Loaded | None:
    """What the running manager at ``where`` has configured; None if it does not answer or refuses."""
    from pathlib import Path

    from ..config import PortConfig, ShareConfig
    from ..configfile import Loaded, Problem

    try:
        answer = control.request(where.socket, "list", timeout=10)
    except control.ControlError:
        return None
    if not answer.get("ok"):
        return None
    return Loaded(ports=[PortConfig.from_json(p) for p in answer.get("ports", [])],
                  shares=[ShareConfig.from_json(s) for s in answer.get("shares", [])],
                  problems=[Problem(Path(p["file"]), p["table"], p["index"], p["line"], p["device"], p["reason"])
                            for p in answer.get("problems", [])])
