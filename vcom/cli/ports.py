"""The virtual ports: ``vcom add`` (one port from the command line, or every [[port]] table of a file with
``--from``), ``vcom remove``, ``vcom unshare`` and ``vcom list``.  Every port of a command line or a file is
checked in full before a manager is started or anything is created; removing works with no manager running
(the config file is edited alone), and so does listing."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from .. import clitext, control, paths
from . import command
from .background import _ensure_manager
from .common import (
    _ask,
    _check_tls_files,
    _choices,
    _configured,
    _converted,
    _load_config,
    _required,
    complete_devices,
    fail,
    fail_option,
    for_another_user,
    manager_paths,
)

if TYPE_CHECKING:
    import typer  # set in this module by _typer_app(): `vcom add DEVICE TARGET` does without it (see quickargs)

    from ..config import PortConfig


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
    owner: Annotated[str | None, typer.Option(
        metavar="USER", show_default=False,
        help="Owner of the port [default: root when run as root; you, through the system manager]")] = None,
    group: Annotated[str | None, typer.Option(
        metavar="GROUP", show_default=False,
        help="Group of the port [default: dialout when run as root or through the system manager]")] = None,
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
    from ..config import tls_files
    from ..portpath import directory_identity, files_seen

    # What the manager must see as this command does (it may run in a mount namespace of its own).
    seen = {port.device: directory_identity(port.device) for port in ports}
    files = files_seen(path for port in ports for _, path in tls_files(port))
    if from_file is None:
        _ask("add", port=ports[0].to_json(), seen=seen, seen_files=files)
    else:
        _ask("add", ports=[port.to_json() for port in ports], seen=seen, seen_files=files)
    for port in ports:
        print(f"{port.device} -> {port.target}")


def _port_options(**given: Any) -> dict[str, Any]:
    """The options of `vcom add` given on the command line, converted; absent ones are left out."""
    options = _converted(**given)
    if os.geteuid() == 0:
        options.setdefault("owner", "root")
        options.setdefault("group", "dialout")
    elif for_another_user(manager_paths()):
        # A member of group vcom asking the system manager, which runs as root: the port is theirs, as one
        # made by a manager of their own would be (left to root, the pty would be root's and theirs only
        # to see), and the group's as root's ports are.
        options.setdefault("owner", _user_name(os.geteuid()))
        options.setdefault("group", "dialout")
    return options


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)  # an id with no name: the manager takes digits as an id, as chown(1) does


def _port(device: str, target: str | None, options: dict[str, Any]) -> PortConfig:
    """The port the command line asks for; a refusal names the option as typed."""
    from ..config import ConfigError

    if target is None and not options.get("split_of"):
        fail("missing TARGET (host:port); only --split-of ports may leave it out", 2)
    try:
        return _port_quietly(device, target, options, {})
    except ConfigError as exc:
        fail_option(exc)


def _target_of(primary: str, batch: dict[str, PortConfig]) -> str:
    """The target of the port a split port shares: from the same batch, or from the config file."""
    from ..config import ConfigError

    if primary in batch:
        return batch[primary].target
    for port in _load_config(manager_paths()).ports:
        if port.device == primary:
            return port.target
    raise ConfigError("is not a vcom port", "split_of", primary)


def _ports_from_file(name: str, options: dict[str, Any]) -> list[PortConfig]:
    from ..config import ConfigError
    from ..configfile import ConfigSyntaxError, header_lines, parse_toml

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
    from ..config import ConfigError, PortConfig

    values = {**values, "device": os.path.abspath(device)}
    if target is None and isinstance(values.get("split_of"), str):
        target = _target_of(values["split_of"], batch)
    if target is None:
        raise ConfigError("needs a target (only split_of ports may leave it out)")
    port = PortConfig.from_json({**values, "target": target})
    # Kept in the file as vcom writes it: rfc2217://host:port rather than host:port.
    return PortConfig.from_json({**port.to_json(), "target": str(port.parsed_target)})


def _check_port_path(device: str) -> None:
    from ..portpath import PORT_DIRECTORY, NotWritable, PortPathError, check_port_path

    # The system manager (root) makes a member's ports, in /dev only: it says so itself (vcom.onbehalf).
    try:
        check_port_path(device, replace_symlink=False, writable=not for_another_user(manager_paths()))
    except NotWritable as exc:
        if (os.path.dirname(os.path.abspath(device)) == PORT_DIRECTORY
                and paths.system_refuses()):
            fail(f"{exc}; the system manager, which may write there, takes requests from root and group "
                 f"'{control.CONTROL_GROUP}' only (sudo vcom add ..., or join the group)")
        fail(str(exc))
    except PortPathError as exc:
        if _is_configured("port", device):
            fail(f"{device} is already a vcom port (vcom remove {device} first)")
        fail(str(exc))


def _is_configured(table: str, device: str) -> bool:
    from ..configfile import ConfigSyntaxError

    try:
        loaded = _configured(manager_paths())
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
    where = manager_paths()
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
    from ..configfile import ConfigFile, ConfigSyntaxError

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
    where = manager_paths()
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
