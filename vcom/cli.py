"""The ``vcom`` command: typer commands that talk to the manager, or read the config file when no
manager runs (``list``, ``status``, ``remove``, ``unshare``).

Every user error is one line on stderr, in vcom's words, naming the option as it was typed, and a
non-zero exit: click's usage errors are caught and reworded, values are checked here (not by the
argument parser, whose wording is its own), and everything the manager refuses comes back as one line
too.  Arguments are checked before a manager is started or anything is created.

Start-up time matters (provisioning scripts call ``vcom add`` a thousand times): this module imports
only what every command needs; each command imports the rest itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

from . import clitext, control, paths, quickargs

if TYPE_CHECKING:
    import typer  # imported by _typer_app(): `vcom add DEVICE TARGET` does without it (see quickargs)

    from .config import ConfigError, PortConfig, ShareConfig
    from .configfile import Loaded

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


_MANAGER_START_TIMEOUT = 15.0
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


def complete_devices(incomplete: str) -> list[str]:
    """Shell completion of port and share devices, from the config file (no manager needed)."""
    from .configfile import load

    try:
        loaded = load(paths.resolve().config)
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
    where = paths.resolve()
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


def _load_config(where: paths.Paths) -> Loaded:
    from .configfile import ConfigSyntaxError, load

    try:
        return load(where.config)
    except ConfigSyntaxError as exc:
        fail(str(exc))


# -- ports ---------------------------------------------------------------------------------------


@command(short_help="Create a virtual port that reaches a device server (RFC 2217, TCP, UDP)")
def add(
    device: Annotated[str | None, typer.Argument(
        metavar="DEVICE", show_default=False, help="Path of the virtual port to create, e.g. /dev/ttyV0")] = None,
    target: Annotated[str | None, typer.Argument(
        metavar="TARGET", show_default=False,
        help="host:port or rfc2217://host:port (RFC 2217), tcp://host:port (raw TCP), udp://host:port (UDP); "
             "IPv6 as [addr]:port.  May be left out with --split-of")] = None,
    baud: Annotated[str | None, typer.Option(metavar="N", show_default=False,
                                             help="Speed of the freshly created port [default: 9600]")] = None,
    connect: Annotated[str | None, typer.Option(
        metavar="on-open|always", show_default=False, autocompletion=_choices("on-open", "always"),
        help="Connect when a program opens the port, or keep connected [default: on-open]")] = None,
    linger: Annotated[str | None, typer.Option(
        metavar="S", show_default=False, help="With on-open: seconds connected after the last close [default: 2]")] = (
        None),
    owner: Annotated[str | None, typer.Option(metavar="USER", show_default=False,
                                              help="Owner of the port [default: root when run as root]")] = None,
    group: Annotated[str | None, typer.Option(metavar="GROUP", show_default=False,
                                              help="Group of the port [default: dialout when run as root]")] = None,
    mode: Annotated[str | None, typer.Option(metavar="MODE", show_default=False,
                                             help="Permissions of the port, octal [default: 0660]")] = None,
    retry_max: Annotated[str | None, typer.Option(
        metavar="S", show_default=False, help="Longest wait between reconnect attempts, seconds [default: 15]")] = None,
    peer_timeout: Annotated[str | None, typer.Option(
        metavar="S", show_default=False,
        help="Seconds the server may leave vcom without an answer (a silent network, data unacknowledged, no "
             "data taken) before the connection is made again; 0: the kernel's limits [default: 15]")] = None,
    split_of: Annotated[str | None, typer.Option(
        metavar="PORT", show_default=False,
        help="Share the connection of this existing port: both get the remote's data")] = None,
    data_bits: Annotated[str | None, typer.Option(
        metavar="5|6|7|8", show_default=False, help="Pin data bits (the pty cannot carry them)")] = None,
    parity: Annotated[str | None, typer.Option(
        metavar="none|even|odd|mark|space", show_default=False,
        autocompletion=_choices("none", "even", "odd", "mark", "space"),
        help="Pin parity (the pty cannot carry it)")] = None,
    stop_bits: Annotated[str | None, typer.Option(
        metavar="1|1.5|2", show_default=False, autocompletion=_choices("1", "1.5", "2"), help="Pin stop bits")] = None,
    pin_baud: Annotated[bool | None, typer.Option(
        "--pin-baud/--no-pin-baud", show_default=False,
        help="Pin --baud: the program's speed changes are not sent [default: no]")] = None,
    hangup_on_dcd: Annotated[bool | None, typer.Option(
        "--hangup-on-dcd/--no-hangup-on-dcd", show_default=False,
        help="Hang the program up when the remote drops DCD and its termios has CLOCAL off [default: on]")] = None,
    emulate_baud: Annotated[bool | None, typer.Option(
        "--emulate-baud/--no-emulate-baud", show_default=False,
        help="Take the program's data no faster than the line rate in force, as a local UART does: writes "
             "block, write timeouts fire and tcdrain waits for the line time [default: no]")] = None,
    tls_ca: Annotated[str | None, typer.Option(
        metavar="FILE", show_default=False,
        help="TLS targets: the CA certificate(s) that must have signed the server's certificate (a PEM file, or a "
             "hashed directory) [default: the system's trust store]")] = None,
    tls_cert: Annotated[str | None, typer.Option(
        metavar="FILE", show_default=False, help="TLS targets: client certificate (PEM), with --tls-key")] = None,
    tls_key: Annotated[str | None, typer.Option(
        metavar="FILE", show_default=False,
        help="TLS targets: the client certificate's private key (PEM, not readable by every user)")] = None,
    tls_server_name: Annotated[str | None, typer.Option(
        metavar="NAME", show_default=False,
        help="TLS targets: the name the server's certificate must carry, also sent as SNI [default: the target's "
             "host]")] = None,
    tls_insecure: Annotated[bool | None, typer.Option(
        "--tls-insecure", show_default=False,
        help="TLS targets: do not verify the server at all (anyone on the path can read and change the data); "
             "status shows it")] = None,
    from_file: Annotated[str | None, typer.Option(
        "--from", metavar="FILE", show_default=False,
        help="Create every [[port]] table of this TOML file ('-': standard input) in one go; options given "
             "here are the defaults of its entries")] = None,
) -> None:
    """Create a virtual serial port that reaches TARGET (starts a manager if none runs)."""
    options = _port_options(baud=baud, connect=connect, linger=linger, owner=owner, group=group, mode=mode,
                            retry_max=retry_max, peer_timeout=peer_timeout, split_of=split_of, data_bits=data_bits,
                            parity=parity, stop_bits=stop_bits, pin_baud=pin_baud, hangup_on_dcd=hangup_on_dcd,
                            emulate_baud=emulate_baud, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
                            tls_server_name=tls_server_name, tls_insecure=tls_insecure)
    if from_file is not None:
        if device is not None or target is not None:
            fail("--from takes the ports from the file: give no DEVICE or TARGET with it", 2)
        ports = _ports_from_file(from_file, options)
    else:
        if device is None:
            fail("missing DEVICE: vcom add DEVICE TARGET [options] (or vcom add --from FILE)", 2)
        ports = [_port(device, target, options)]
    for port in ports:
        _check_port_path(port.device)
        _check_tls_files(port.parsed_target.tls_options, "client", f"{from_file}: {port.device}: " if from_file else "")
    _ensure_manager()
    if from_file is None:
        _ask("add", port=ports[0].to_json())
    else:
        _ask("add", ports=[port.to_json() for port in ports])
    for port in ports:
        print(f"{port.device} -> {port.target}")


def _port_options(**given: Any) -> dict[str, Any]:
    """The options of `vcom add` given on the command line, converted; absent ones are left out."""
    options = _converted(**given)
    if os.geteuid() == 0:
        options.setdefault("owner", "root")
        options.setdefault("group", "dialout")
    return options


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


def _port(device: str, target: str | None, options: dict[str, Any]) -> PortConfig:
    """The port the command line asks for; a refusal names the option as typed."""
    from .config import ConfigError

    if target is None and not options.get("split_of"):
        fail("missing TARGET (host:port); only --split-of ports may leave it out", 2)
    try:
        return _port_quietly(device, target, options, {})
    except ConfigError as exc:
        fail_option(exc)


def _target_of(primary: str, batch: dict[str, PortConfig]) -> str:
    """The target of the port a split port shares: from the same batch, or from the config file."""
    from .config import ConfigError

    if primary in batch:
        return batch[primary].target
    for port in _load_config(paths.resolve()).ports:
        if port.device == primary:
            return port.target
    raise ConfigError("is not a vcom port", "split_of", primary)


def _ports_from_file(name: str, options: dict[str, Any]) -> list[PortConfig]:
    from .config import ConfigError
    from .configfile import ConfigSyntaxError, header_lines, parse_toml

    source = Path("<stdin>" if name == "-" else name)
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
        data = parse_toml(source, text)
    except ConfigSyntaxError as exc:
        fail(str(exc))
    except UnicodeDecodeError:
        fail(f"{name}: not UTF-8 text")
    except OSError as exc:
        fail(f"cannot read {name}: {(exc.strerror or str(exc)).lower()}")
    entries = data.get("port")
    others = sorted(set(data) - {"port"})
    if others or not isinstance(entries, list) or not entries:
        fail(f"{name}: expected [[port]] tables only (as in the config file), one per port")
    lines = header_lines(text, data)["port"]
    batch: dict[str, PortConfig] = {}
    for index, entry in enumerate(entries, 1):
        where = f"{name}:{lines[index - 1]}" if lines else name
        if not isinstance(entry, dict) or not isinstance(entry.get("device"), str):
            fail(f"{where}: [[port]] #{index}: needs a device = \"/dev/...\"")
        values = {**options, **entry}
        if isinstance(values.get("split_of"), str):
            values["split_of"] = os.path.abspath(values["split_of"])
        device = values.pop("device")
        target = values.pop("target", None)
        try:
            port = _port_quietly(device, target, values, batch)
        except ConfigError as exc:
            fail(f"{where}: [[port]] #{index} ({device}): {exc}")
        if port.device in batch:
            fail(f"{where}: [[port]] #{index}: {port.device} is given twice")
        batch[port.device] = port
    return list(batch.values())


def _port_quietly(device: str, target: object, values: dict[str, Any], batch: dict[str, PortConfig]) -> PortConfig:
    """The port ``values`` define; ConfigError (naming the setting by its key) if it cannot be used."""
    from .config import ConfigError, PortConfig

    values = {**values, "device": os.path.abspath(device)}
    if target is None and isinstance(values.get("split_of"), str):
        target = _target_of(values["split_of"], batch)
    if target is None:
        raise ConfigError("needs a target (only split_of ports may leave it out)")
    port = PortConfig.from_json({**values, "target": target})
    # Kept in the file as vcom writes it: rfc2217://host:port rather than host:port.
    return PortConfig.from_json({**port.to_json(), "target": str(port.parsed_target)})


def _check_tls_files(options: Any, role: str, in_file: str = "") -> None:
    """TLS files that cannot be used are refused here, naming the option as typed.  A file this user may not
    read is left to the manager, which may run as another user (root) that can."""
    if options is None:
        return
    from .config import ConfigError
    from .tls import client_context, server_context

    try:
        client_context(options) if role == "client" else server_context(options)
    except ConfigError as exc:
        if "permission denied" in exc.reason:
            return
        if in_file:
            fail(f"{in_file}{exc}")
        fail_option(exc)


def _check_port_path(device: str) -> None:
    from .portpath import PortPathError, check_port_path

    try:
        check_port_path(device, replace_symlink=False)
    except PortPathError as exc:
        if _is_configured("port", device):
            fail(f"{device} is already a vcom port (vcom remove {device} first)")
        fail(str(exc))


def _is_configured(table: str, device: str) -> bool:
    from .configfile import ConfigSyntaxError, load

    try:
        loaded = load(paths.resolve().config)
    except ConfigSyntaxError:
        return False
    return any(p.device == device for p in (loaded.ports if table == "port" else loaded.shares))


@command(short_help="Remove a virtual port")
def remove(device: Annotated[str | None, typer.Argument(metavar="DEVICE", show_default=False,
                                                        help="Path of the virtual port",
                                                        autocompletion=complete_devices)] = None) -> None:
    """Remove a virtual port (its symlink goes, its connection closes, its entry leaves the config)."""
    _remove_or_edit("port", os.path.abspath(_required(device, "DEVICE", "vcom remove DEVICE")))


@command(short_help="Stop sharing a device")
def unshare(device: Annotated[str | None, typer.Argument(metavar="DEVICE", show_default=False,
                                                         help="The shared device, or sim:NAME",
                                                         autocompletion=complete_devices)] = None) -> None:
    """Stop sharing a device (and take it out of the config)."""
    device = _required(device, "DEVICE", "vcom unshare DEVICE")
    _remove_or_edit("share", device.lower() if device.lower().startswith("sim:") else os.path.abspath(device))


def _remove_or_edit(table: str, device: str) -> None:
    """Ask the manager; with none running, edit the config file alone."""
    where = paths.resolve()
    cmd = "remove" if table == "port" else "unshare"
    try:
        answer = control.request(where.socket, cmd, device=device)
    except control.NotRunning:
        _edit_without_manager(where, table, device)
        return
    except control.ControlError as exc:
        fail(str(exc))
    if not answer.get("ok"):
        fail(str(answer.get("error", "the manager refused the request")))


def _edit_without_manager(where: paths.Paths, table: str, device: str) -> None:
    from .configfile import ConfigFile, ConfigSyntaxError

    config = ConfigFile(where.config)
    try:
        loaded = config.load()
        splits = [p.device for p in loaded.ports if p.split_of == device] if table == "port" else []
        if splits:
            fail(f"{device} has split ports ({', '.join(splits)}); remove them first")
        removed = config.remove(table, device)
    except ConfigSyntaxError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{where.config}: {(exc.strerror or str(exc)).lower()}")
    if not removed:
        fail(f"{device} is not a vcom {'port' if table == 'port' else 'share'} (no manager is running; "
             f"{where.config} has no entry for it)")
    if table == "port" and os.path.islink(device) and os.readlink(device).startswith("/dev/pts/"):
        # Left by a manager that died; with none running nobody serves it.
        os.unlink(device)
    print(f"{device}: removed from {where.config} (no manager is running)")


@command("list", short_help="The configured ports and shares (no manager needed); --paths for scripts")
def list_ports(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
    paths_only: Annotated[bool, typer.Option(
        "--paths", help="Only the path of every configured port, one per line (for scripts that look for "
                        "ports: pyserial's list_ports cannot see ptys)")] = False,
) -> None:
    """List the configured ports and shares, from the config file (no manager needed)."""
    where = paths.resolve()
    loaded = _load_config(where)
    if paths_only:
        for port in loaded.ports:
            print(port.device)
        return
    pid = _manager_pid(where)
    if as_json:
        print(json.dumps({"config": str(where.config), "manager": {"running": pid is not None, "pid": pid},
                          "ports": [p.to_json() for p in loaded.ports],
                          "shares": [s.to_json() for s in loaded.shares],
                          "problems": [p.to_json() for p in loaded.problems]}, indent=2))
        return
    for port in loaded.ports:
        split = f" split-of={port.split_of}" if port.split_of else ""
        print(f"{port.device}  {port.target}  baud={port.baud} connect={port.connect}{split}")
    for item in loaded.shares:
        print(f"share {item.device}  {item.protocol} on {item.listen}{clitext.share_access(item.to_json())}")
    for problem in loaded.problems:
        print(f"unusable entry, skipped: {problem}")
    manager = f"running (pid {pid})" if pid is not None else "not running"
    print(f"config {where.config}; manager {manager}")


def _manager_pid(where: paths.Paths) -> int | None:
    try:
        answer = control.request(where.socket, "ping", timeout=5)
    except control.ControlError:
        return None
    return int(answer["pid"]) if answer.get("ok") and isinstance(answer.get("pid"), int) else None


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
    where = paths.resolve()
    if watch:
        from . import dashboard

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
    if stale:
        lines.append(f"vcom: {', '.join(stale)} still lead to the pty of a manager that stopped without "
                     "cleaning up; the next start of the manager replaces them")
    lines += [f"vcom: unusable entry, skipped: {problem}" for problem in loaded.problems]
    print("\n".join(lines), file=sys.stderr)
    raise SystemExit(EXIT_NOT_RUNNING)


# -- shares --------------------------------------------------------------------------------------


def parse_listen(text: str) -> tuple[str, int]:
    """``PORT``, ``:PORT``, ``HOST:PORT`` or ``[V6]:PORT``; the host defaults to loopback.

    Port 0 lets the kernel pick a free port; the answer names the one bound.
    """
    from .config import ShareError
    from .target import TargetError, split_host_port

    text = text.strip()
    if ":" in text or text.startswith("["):
        try:
            host, port_text = split_host_port(text)
        except TargetError as exc:
            raise ShareError(f"--listen {shlex.quote(text)}: {exc}") from None
    else:
        host, port_text = "", text
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ShareError(f"--listen {shlex.quote(text)}: the port must be a number between 0 (any free port) "
                         "and 65535")
    return host or "127.0.0.1", int(port_text)


@command(short_help="Serve a local serial device (or sim:echo|gps|modem) to network clients")
def share(
    device: Annotated[str | None, typer.Argument(
        metavar="DEVICE", show_default=False,
        help="Local serial device (/dev/ttyUSB0, any tty) or sim:echo, sim:gps, sim:modem")] = None,
    listen: Annotated[str, typer.Option(
        metavar="[HOST]:PORT", help="Where to listen: PORT or :PORT (loopback), HOST:PORT, [V6ADDR]:PORT "
                                    "([::]:PORT for every address)")] = "127.0.0.1:4001",
    protocol: Annotated[str, typer.Option(metavar="rfc2217|tcp|udp", autocompletion=_choices("rfc2217", "tcp", "udp"),
                                          help="RFC 2217 server, raw TCP or UDP")] = "rfc2217",
    slow_client: Annotated[str, typer.Option(
        metavar="drop|disconnect", autocompletion=_choices("drop", "disconnect"),
        help="A client that cannot keep up loses its oldest data, or is disconnected")] = "drop",
    client_buffer: Annotated[str, typer.Option(
        metavar="N", help="Bytes queued per client before the slow-client policy acts")] = "65536",
    control: Annotated[str, typer.Option(
        metavar="all|first", autocompletion=_choices("all", "first"),
        help="Who may change settings and signals: every client, or only the longest-connected one")] = "all",
    max_clients: Annotated[str, typer.Option(metavar="N", help="Clients at once; one more is refused")] = "32",
    tls_cert: Annotated[str | None, typer.Option(
        metavar="FILE", show_default=False, help="Serve over TLS with this certificate (PEM), with --tls-key")] = None,
    tls_key: Annotated[str | None, typer.Option(
        metavar="FILE", show_default=False,
        help="The certificate's private key (PEM, not readable by every user)")] = None,
    tls_client_ca: Annotated[str | None, typer.Option(
        metavar="FILE", show_default=False,
        help="Mutual TLS: every client must present a certificate this CA signed (PEM file or hashed "
             "directory)")] = None,
    allow: Annotated[list[str] | None, typer.Option(
        metavar="CIDR", show_default=False,
        help="Only these addresses or networks may connect, e.g. 192.0.2.0/24 (repeat for more) [default: "
             "everyone]")] = None,
    max_clients_per_address: Annotated[str, typer.Option(
        metavar="N", help="Clients at once from one address; one more from it is refused")] = "8",
    idle_timeout: Annotated[str, typer.Option(
        metavar="S", help="Close a client after this many seconds without traffic either way (it sends "
                          "nothing and takes nothing); 0: never")] = "0",
    foreground: Annotated[bool, typer.Option(
        help="Serve in this process until SIGTERM, without a manager and without the config file "
             "(what vcom-share@.service runs); SIGHUP reads the TLS files again")] = False,
) -> None:
    """Serve a local serial device to network clients (kept in the config, started with the manager)."""
    from .config import ShareConfig, ShareError

    device = _required(device, "DEVICE", "vcom share DEVICE [options]")
    _typed.update(protocol=protocol, slow_client=slow_client, control=control)
    if not device.lower().startswith("sim:"):
        device = os.path.abspath(device)
    _typed.update(client_buffer=client_buffer, max_clients=max_clients,
                  max_clients_per_address=max_clients_per_address, idle_timeout=idle_timeout)
    buffer = _whole("--client-buffer", client_buffer)
    clients = _whole("--max-clients", max_clients)
    files = _converted(tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca)
    per_address = _whole("--max-clients-per-address", max_clients_per_address)
    idle = _number("--idle-timeout", idle_timeout)
    try:
        host, port = parse_listen(listen)
        config = ShareConfig(device=device, listen_host=host, listen_port=port, protocol=protocol,
                             slow_client=slow_client, client_buffer=buffer, control=control, max_clients=clients,
                             allow=tuple(allow or ()), max_clients_per_address=per_address, idle_timeout=idle,
                             **files)
    except ShareError as exc:
        fail_option(exc)
    _check_tls_files(config.server_tls, "server")
    if foreground:
        _share_in_foreground(config)
        return
    _ensure_manager()
    answer = _ask("share", share=config.to_json())
    over = " over TLS" if config.server_tls else ""
    print(f"{device} shared as {protocol}{over} on {answer['share']['listen']}")
    for warning in answer["share"].get("warnings") or []:
        print(f"vcom: warning: {warning}", file=sys.stderr)


def _share_in_foreground(config: ShareConfig) -> None:
    import asyncio
    import logging
    import signal

    from .config import ShareError
    from .sdnotify import notify
    from .share import Share

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def serve() -> None:
        from .fdlimit import quiet_accept_errors

        loop = asyncio.get_running_loop()
        quiet_accept_errors(loop)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = Share(config)
        await server.start()
        loop.add_signal_handler(signal.SIGHUP, server.reload_tls)  # reload; systemctl reload sends it
        notify(f"READY=1\nSTATUS=serving {config.device} on {server.listen}")
        try:
            await stop.wait()
        finally:
            notify("STOPPING=1")
            await server.close()

    try:
        asyncio.run(serve())
    except ShareError as exc:
        fail(str(exc))


# -- watching ------------------------------------------------------------------------------------


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
    where = paths.resolve()
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


# -- the manager ---------------------------------------------------------------------------------


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
    from .configfile import ConfigSyntaxError
    from .manager import Manager, ManagerError

    where = paths.resolve()
    if metrics:
        from .metrics import MetricsError, parse_addr

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

    from . import demo as demo_module

    limit = None
    if seconds is not None:
        limit = _number("--seconds", seconds)
        if limit < 0.1:
            fail(f"--seconds {shlex.quote(seconds)} must be at least 0.1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    code = asyncio.run(demo_module.run(limit))
    if code:
        fail("no position came through the virtual port", code)


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
    from .interposer.build import BuildError, library
    from .interposer.supervisor import WrapError, default_signals, run

    where = paths.resolve()
    env = dict(os.environ)
    env["VCOM_INTERPOSER"] = str(where.interposer)
    if not preload:
        try:
            raise SystemExit(run(program, env, where.interposer))
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
    from .interposer import wrapall
    from .interposer.build import BuildError

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
    from .interposer.build import BuildError, library

    where = paths.resolve()
    try:
        print(f"LD_PRELOAD={library(where.cache)}")
    except BuildError as exc:
        fail(str(exc))
    print(f"VCOM_INTERPOSER={where.interposer}")


@command(short_help="Read TLS certificates and keys again, without dropping anyone")
def reload() -> None:
    """Make the manager read the TLS certificates, keys and CAs of every port and share again (as SIGHUP
    does): new connections use them, connected clients and links stay.  Files that cannot be used are
    named, and the ones read before stay in use (exit 1)."""
    answer = _ask("reload")
    problems = answer.get("problems") or []
    print(f"TLS files read again: {len(answer.get('ports') or [])} port(s), {len(answer.get('shares') or [])} "
          "share(s); nobody was disconnected")
    for problem in problems:
        print(f"vcom: {problem} (the files read before stay in use)", file=sys.stderr)
    if problems:
        raise SystemExit(1)


@command(short_help="Stop the running manager (its ports go until it runs again)")
def shutdown() -> None:
    """Stop the running manager; its ports are removed until it starts again."""
    where = paths.resolve()
    _ask("shutdown")
    # The manager removes its socket last, after every port: wait for that, so the ports are gone on return.
    deadline = time.monotonic() + 15
    while where.socket.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _python_env() -> dict[str, str]:
    """This environment, where `python -m vcom` finds the package where this command found it (the
    installed launcher puts its own library directory on sys.path; a child would not inherit that)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rest = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry and entry != here]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([here, *rest])}


def _ensure_manager() -> None:
    """Start a background manager unless one answers, and wait until it does."""
    where = paths.resolve()
    try:
        where.check()
    except ValueError as exc:
        fail(str(exc))
    if control.manager_running(where.socket):
        return
    import subprocess
    _load_config(where)  # a broken file is reported here, in full, rather than as the manager's last words
    where.log.parent.mkdir(parents=True, exist_ok=True)
    env = _python_env()
    # The log names ports, peers' addresses and what they sent: for the manager's user only.
    descriptor = os.open(where.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    with contextlib.suppress(OSError):
        os.fchmod(descriptor, 0o600)  # also a log an older vcom created world-readable
    with open(descriptor, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "vcom", "run"],  # -P: not from the working directory
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, env=env,
            start_new_session=True, close_fds=True,
        )
    deadline = time.monotonic() + _MANAGER_START_TIMEOUT
    while time.monotonic() < deadline:
        if control.manager_running(where.socket):
            return
        if proc.poll() is not None:
            fail(f"the manager did not start: {_last_line(where.log)}")
        time.sleep(0.05)
    fail(f"the manager did not answer within {_MANAGER_START_TIMEOUT:g} s; see {where.log}")


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1].removeprefix("vcom: ") if lines else "no log"


def _root() -> None:
    # A callback keeps `vcom COMMAND` a command group when _typer_app() is told a single command.
    pass


def _typer_app(argv: list[str]) -> typer.Typer:
    """The typer app for this command line.  typer builds the parser of every command it knows on each
    call (a sixth of a `vcom add`): when the line names a command, it is told only that one."""
    global typer
    import typer

    app = typer.Typer(**_TYPER_SETTINGS)
    app.callback()(_root)
    name = argv[0] if argv and not argv[0].startswith("-") else None
    asked = [entry for entry in _COMMANDS if command_name(entry[0], entry[2]) == name]
    for args, kwargs, function in asked or _COMMANDS:
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
