"""The ``vcom`` command: typer commands that talk to the manager.

Every user error is one line on stderr and a non-zero exit: click's usage
errors are caught and shortened, and everything the manager refuses comes
back as one line too.  Arguments are checked here first, so that a typo
fails before a manager is started or anything is created.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from . import control, paths
from .config import ConfigError, PortConfig, parse_mode
from .pty import PortPathError, check_port_path
from .share import ShareConfig, ShareError
from .target import TargetError, parse_target, split_host_port

app = typer.Typer(
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Virtual serial ports that reach remote serial device servers (RFC 2217, raw TCP).",
)

_MANAGER_START_TIMEOUT = 15.0


class Connect(str, enum.Enum):
    ON_OPEN = "on-open"
    ALWAYS = "always"


def complete_devices(incomplete: str) -> list[str]:
    """Shell completion of port and share devices, from the config file (no manager needed)."""
    from .config import load

    try:
        loaded = load(paths.resolve().config)
    except OSError:
        return []
    names = [p.device for p in loaded.ports] + [s.device for s in loaded.shares]
    return [name for name in names if name.startswith(incomplete)]


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"vcom: {message}", file=sys.stderr)
    raise SystemExit(code)


def _ask(cmd: str, **args: Any) -> dict[str, Any]:
    where = paths.resolve()
    try:
        answer = control.request(where.socket, cmd, **args)
    except control.ControlError as exc:
        fail(str(exc))
    if not answer.get("ok"):
        fail(str(answer.get("error", "the manager refused the request")))
    return answer


class ParityChoice(str, enum.Enum):
    NONE = "none"
    EVEN = "even"
    ODD = "odd"
    MARK = "mark"
    SPACE = "space"


class StopChoice(str, enum.Enum):
    ONE = "1"
    ONE_POINT_FIVE = "1.5"
    TWO = "2"


@app.command()
def add(
    device: Annotated[str, typer.Argument(help="Path of the virtual port to create, e.g. /dev/ttyV0")],
    target: Annotated[str | None, typer.Argument(
        help="host:port, rfc2217://, tcp:// or udp://host:port, [v6addr]:port (optional with --split-of)")] = None,
    baud: Annotated[int, typer.Option(min=1, max=20_000_000, help="Speed of the freshly created port")] = 9600,
    connect: Annotated[Connect, typer.Option(help="Connect when a program opens the port, or always")] = (
        Connect.ON_OPEN),
    linger: Annotated[float, typer.Option(min=0, max=86400, help="Seconds connected after the last close")] = 2.0,
    owner: Annotated[str | None, typer.Option(help="Owner of the port (default: root when run as root)")] = None,
    group: Annotated[str | None, typer.Option(help="Group of the port (default: dialout when run as root)")] = None,
    mode: Annotated[str, typer.Option(help="Permissions of the port, octal")] = "0660",
    retry_max: Annotated[float, typer.Option(min=0.1, max=86400, help="Longest wait between reconnects, s")] = 15.0,
    split_of: Annotated[str | None, typer.Option(
        help="Share the connection of this existing port: both get the remote's data")] = None,
    data_bits: Annotated[int | None, typer.Option(min=5, max=8, help="Pin data bits (the pty cannot carry them)")] = (
        None),
    parity: Annotated[ParityChoice | None, typer.Option(help="Pin parity (the pty cannot carry it)")] = None,
    stop_bits: Annotated[StopChoice | None, typer.Option(help="Pin stop bits")] = None,
    pin_baud: Annotated[bool, typer.Option(help="Pin --baud: the program's speed changes are not sent")] = False,
    hangup_on_dcd: Annotated[bool, typer.Option(help="Hang the program up when the remote drops DCD and "
                                                     "its termios has CLOCAL off")] = True,
) -> None:
    """Create a virtual serial port that reaches TARGET."""
    device = os.path.abspath(device)
    try:
        if split_of:
            split_of = os.path.abspath(split_of)
            if target is None:
                target = _ask("status", device=split_of)["port"]["target"]
        if target is None:
            fail("missing TARGET (host:port); only --split-of ports may leave it out", 2)
        target = str(parse_target(target))
        if os.geteuid() == 0:
            owner = owner or "root"
            group = group or "dialout"
        port = PortConfig(device=device, target=target, baud=baud, connect=connect.value, linger=linger,
                          owner=owner, group=group, mode=parse_mode(mode), retry_max=retry_max,
                          split_of=split_of, data_bits=data_bits, parity=parity.value if parity else None,
                          stop_bits=stop_bits.value if stop_bits else None, pin_baud=pin_baud,
                          hangup_on_dcd=hangup_on_dcd)
        check_port_path(device, replace_symlink=False)
    except (TargetError, ConfigError, PortPathError) as exc:
        fail(str(exc))
    _ensure_manager()
    _ask("add", port=port.to_json())
    print(f"{device} -> {target}")


class Protocol(str, enum.Enum):
    RFC2217 = "rfc2217"
    TCP = "tcp"
    UDP = "udp"


class SlowClient(str, enum.Enum):
    DROP = "drop"
    DISCONNECT = "disconnect"


class Control(str, enum.Enum):
    ALL = "all"
    FIRST = "first"


def parse_listen(text: str) -> tuple[str, int]:
    """``PORT``, ``:PORT``, ``HOST:PORT`` or ``[V6]:PORT``; the host defaults to loopback.

    Port 0 lets the kernel pick a free port; the answer names the one bound.
    """
    text = text.strip()
    if ":" in text or text.startswith("["):
        try:
            host, port_text = split_host_port(text)
        except TargetError as exc:
            raise ShareError(f"listen address {text!r}: {exc}") from None
    else:
        host, port_text = "", text
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ShareError(f"listen address {text!r}: port must be a number between 0 (any free port) and 65535")
    return host or "127.0.0.1", int(port_text)


@app.command()
def share(
    device: Annotated[str, typer.Argument(help="Local serial device (/dev/ttyUSB0, any tty) or sim:echo|gps|modem")],
    listen: Annotated[str, typer.Option(help="[HOST]:PORT to listen on; loopback unless a host is named")] = (
        "127.0.0.1:4001"),
    protocol: Annotated[Protocol, typer.Option(help="rfc2217, raw tcp or udp")] = Protocol.RFC2217,
    slow_client: Annotated[SlowClient, typer.Option(help="A client that cannot keep up loses its oldest data, "
                                                         "or is disconnected")] = SlowClient.DROP,
    client_buffer: Annotated[int, typer.Option(help="Bytes queued per client before the slow-client policy acts")] = (
        65536),
    control: Annotated[Control, typer.Option(help="Who may change settings and signals: all clients, or the "
                                                   "longest-connected one")] = Control.ALL,
    max_clients: Annotated[int, typer.Option(help="Clients at once; one more is refused")] = 32,
    foreground: Annotated[bool, typer.Option(help="Serve in this process, without a manager (vcom-share@.service)")] = (
        False),
) -> None:
    """Serve a local serial device to network clients (kept in the config, started with the manager)."""
    if not device.lower().startswith("sim:"):
        device = os.path.abspath(device)
    try:
        host, port = parse_listen(listen)
        config = ShareConfig(device=device, listen_host=host, listen_port=port, protocol=protocol.value,
                             slow_client=slow_client.value, client_buffer=client_buffer, control=control.value,
                             max_clients=max_clients)
    except ShareError as exc:
        fail(str(exc))
    if foreground:
        _share_in_foreground(config)
        return
    _ensure_manager()
    answer = _ask("share", share=config.to_json())
    print(f"{device} shared as {protocol.value} on {answer['share']['listen']}")


def _share_in_foreground(config: ShareConfig) -> None:
    from .sdnotify import notify
    from .share import Share

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = Share(config)
        await server.start()
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


@app.command()
def unshare(device: Annotated[str, typer.Argument(help="The shared device", autocompletion=complete_devices)]) -> None:
    """Stop sharing a device."""
    _ask("unshare", device=device if device.lower().startswith("sim:") else os.path.abspath(device))


@app.command()
def remove(device: Annotated[str, typer.Argument(help="Path of the virtual port",
                                                 autocompletion=complete_devices)]) -> None:
    """Remove a virtual port."""
    _ask("remove", device=os.path.abspath(device))


@app.command("list")
def list_ports(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False) -> None:
    """List the configured ports."""
    answer = _ask("list")
    if as_json:
        print(json.dumps({"ports": answer["ports"], "shares": answer["shares"]}, indent=2))
        return
    for port in answer["ports"]:
        split = f" split-of={port['split_of']}" if port.get("split_of") else ""
        print(f"{port['device']}  {port['target']}  baud={port['baud']} connect={port['connect']}{split}")
    for item in answer["shares"]:
        print(f"share {item['device']}  {item['protocol']} on {item['listen_host']}:{item['listen_port']}")


@app.command()
def status(
    device: Annotated[str | None, typer.Argument(help="One port (default: all)", autocompletion=complete_devices)] = (
        None),
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
    watch: Annotated[bool, typer.Option(help="Live full-screen view of every port (q quits, s sorts, / filters)")] = (
        False),
    interval: Annotated[float, typer.Option(min=0.1, help="Refresh interval of --watch, seconds")] = 1.0,
) -> None:
    """Show state, remote, settings in force, traffic and errors of the ports."""
    if watch:
        from . import dashboard

        where = paths.resolve()

        def fetch() -> dict[str, Any]:
            answer = control.request(where.socket, "status", timeout=5)  # ControlError: shown, retried
            if not answer.get("ok"):
                raise control.ControlError(str(answer.get("error")))
            return answer

        dashboard.run(fetch, interval=interval)
        return
    if device and not device.lower().startswith("sim:"):
        device = os.path.abspath(device)
    answer = _ask("status", device=device)
    if device:
        data: Any = answer.get("port") or answer.get("share")
    else:
        data = {"ports": answer["ports"], "shares": answer["shares"]}
    if as_json:
        print(json.dumps(data, indent=2))
        return
    if device:
        print(_format_status(data) if "port" in answer else _format_share(data))
        return
    for port in data["ports"]:
        print(_format_status(port))
    for item in data["shares"]:
        print(_format_share(item))


def _format_status(port: dict[str, Any]) -> str:
    settings = port.get("settings") or {}
    remote = port.get("remote_settings") or {}
    program = _describe(settings)
    in_force = _describe(remote) if any(v is not None for v in remote.values()) else "not acknowledged"
    lines = [
        f"{port['device']}  {port.get('state')}  {'open' if port.get('open') else 'closed'}  -> {port.get('target')}",
        f"  program: {program}   remote: {in_force}"
        + (f"   server: {port['signature']}" if port.get("signature") else ""),
        f"  bytes to remote {port.get('bytes_to_remote', 0)}, from remote {port.get('bytes_from_remote', 0)}, "
        f"dropped {port.get('dropped_bytes', 0)}, connects {port.get('connects', 0)}, "
        f"reconnects {port.get('reconnects', 0)}",
    ]
    signals = port.get("signals") or {}
    if signals:
        names = ("dtr", "rts", "cts", "dsr", "dcd", "ri")
        lamps = " ".join(f"{name.upper()}{_lamp(signals.get(name))}" for name in names)
        errors = port.get("line_errors") or {}
        counted = ", ".join(f"{k} {v}" for k, v in errors.items() if v)
        lines.append(f"  lines: {lamps}" + (f"   line errors: {counted}" if counted else ""))
    if port.get("pinned"):
        lines.append(f"  pinned: {', '.join(port['pinned'])} -> sent {_describe(port.get('effective_settings') or {})}")
    if port.get("com_port") is False:
        lines.append("  server refused RFC 2217: plain data only")
    if port.get("last_error"):
        lines.append(f"  last error: {port['last_error']}")
    return "\n".join(lines)


def _format_share(share: dict[str, Any]) -> str:
    settings = share.get("settings") or {}
    lines = [
        f"share {share['device']}  {share.get('device_state')}  {share.get('protocol')} on {share.get('listen')}",
        f"  device: {_describe(settings) if settings else 'not open'}   clients: {len(share.get('clients', []))}",
    ]
    for client in share.get("clients", []):
        lines.append(f"  client {client.get('peer')}: in {client.get('bytes_in', 0)}, "
                     f"out {client.get('bytes_out', 0)}, dropped {client.get('dropped', 0)}")
    if share.get("device_error"):
        lines.append(f"  device error: {share['device_error']}")
    return "\n".join(lines)


def _lamp(value: object) -> str:
    return "?" if value is None else ("+" if value else "-")


def _describe(s: dict[str, Any]) -> str:
    def get(key: str) -> str:
        value = s.get(key)
        return "?" if value is None else str(value)

    parity = get("parity")
    frame = f"{get('data_bits')}{parity[0].upper() if parity != '?' else '?'}{get('stop_bits')}"
    flow = ""
    if s.get("flow_out") not in (None, "none") or s.get("flow_in") not in (None, "none"):
        flow = f" flow out:{get('flow_out')} in:{get('flow_in')}"
    return f"{get('baud')} {frame}{flow}"


@app.command()
def monitor(
    device: Annotated[str, typer.Argument(help="The vcom port to watch", autocompletion=complete_devices)],
    raw: Annotated[bool, typer.Option(help="One JSON object per event, for piping")] = False,
    output: Annotated[Path | None, typer.Option(help="Record to this file instead of the terminal")] = None,
) -> None:
    """Show a port's traffic (hex and ASCII, both ways) with settings, signal, purge and break events in order."""
    where = paths.resolve()
    out = open(output, "a", encoding="utf-8") if output else sys.stdout  # noqa: SIM115 - closed below
    try:
        for event in control.stream(where.socket, "monitor", device=os.path.abspath(device)):
            lines = [json.dumps(event)] if raw else format_event(event)
            out.write("".join(line + "\n" for line in lines))
            out.flush()
    except control.ControlError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass
    finally:
        if output:
            out.close()


def format_event(event: dict[str, Any]) -> list[str]:
    """Human lines for one monitor event: data as 16-byte hex and ASCII rows, the rest as a word and values."""
    stamp = time.strftime("%H:%M:%S", time.localtime(event["t"])) + f".{int(event['t'] % 1 * 1e6):06d}"
    kind = event.get("kind")
    if kind == "data":
        data = bytes.fromhex(event["data"])
        arrow = ">" if event.get("dir") == "out" else "<"
        note = "  (dropped: port closed)" if event.get("dropped") else ""
        rows = []
        for start in range(0, len(data), 16):
            row = data[start:start + 16]
            text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
            rows.append(f"{stamp}  {arrow} {row.hex(' '):<47}  {text}{note if start == 0 else ''}")
        return rows
    if kind == "settings":
        return [f"{stamp}  * settings {event.get('text')}"]
    if kind == "signals":
        lamps = " ".join(f"{k}{_lamp(v)}" for k, v in event.items() if k not in ("t", "kind"))
        return [f"{stamp}  * signals {lamps}"]
    if kind == "start":
        status = event.get("status", {})
        return [f"{stamp}  * monitoring {status.get('device')} -> {status.get('target')} ({status.get('state')})"]
    details = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("t", "kind"))
    return [f"{stamp}  * {kind}" + (f" {details}" if details else "")]


class LogFormat(str, enum.Enum):
    TEXT = "text"
    JSON = "json"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname.lower(),
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _setup_logging(level: int, log_format: LogFormat) -> None:
    handler = logging.StreamHandler()
    if log_format is LogFormat.JSON:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


@app.command()
def run(
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
    log_format: Annotated[LogFormat, typer.Option(help="text, or json (one object per line, for journald and log "
                                                       "shippers)")] = LogFormat.TEXT,
    metrics: Annotated[str | None, typer.Option(help="Serve Prometheus metrics on HOST:PORT, e.g. 127.0.0.1:9817")] = (
        None),
) -> None:
    """Run the manager in the foreground (for systemd and debugging)."""
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        fail(f"unknown log level {log_level!r} (use debug, info, warning or error)")
    _setup_logging(level, log_format)
    from .manager import Manager, ManagerError

    where = paths.resolve()
    if metrics:
        from .metrics import MetricsError, parse_addr

        try:
            parse_addr(metrics)
        except MetricsError as exc:
            fail(str(exc))
    try:
        asyncio.run(Manager(where, metrics=metrics).run())
    except (ManagerError, ValueError, OSError) as exc:
        fail(str(exc))


@app.command()
def demo(
    seconds: Annotated[float | None, typer.Option(min=0.1, help="Stop after this many seconds (default: Ctrl-C)")] = (
        None),
) -> None:
    """Run the whole chain on this machine: simulated GPS, built-in server, virtual port, a reading program."""
    from . import demo as demo_module

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    code = asyncio.run(demo_module.run(seconds))
    if code:
        fail("no position came through the virtual port", code)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def wrap(
    program: Annotated[list[str], typer.Argument(help="The program and its arguments")],
) -> None:
    """Run PROGRAM so that its modem-line and break calls on vcom ports reach the remote (DTR, RTS, break)."""
    from .lines import PreloadError, library

    where = paths.resolve()
    try:
        lib = library(where.cache)
    except PreloadError as exc:
        fail(str(exc))
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(filter(None, [str(lib), env.get("LD_PRELOAD", "")]))
    env["VCOM_LINES_SOCKET"] = str(where.lines)
    try:
        os.execvpe(program[0], program, env)
    except OSError as exc:
        fail(f"cannot run {program[0]}: {exc.strerror}", 127)


@app.command("preload-path")
def preload_path() -> None:
    """Print the modem-line library (for LD_PRELOAD) and the socket it needs (VCOM_LINES_SOCKET)."""
    from .lines import PreloadError, library

    where = paths.resolve()
    try:
        print(f"LD_PRELOAD={library(where.cache)}")
    except PreloadError as exc:
        fail(str(exc))
    print(f"VCOM_LINES_SOCKET={where.lines}")


@app.command()
def shutdown() -> None:
    """Stop the running manager; its ports are removed until it starts again."""
    where = paths.resolve()
    _ask("shutdown")
    # The manager removes its socket last, after every port: wait for that, so the ports are gone on return.
    deadline = time.monotonic() + 15
    while where.socket.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _ensure_manager() -> None:
    """Start a background manager unless one answers, and wait until it does."""
    where = paths.resolve()
    try:
        where.check()
    except ValueError as exc:
        fail(str(exc))
    if control.manager_running(where.socket):
        return
    where.log.parent.mkdir(parents=True, exist_ok=True)
    with open(where.log, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vcom", "run"],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
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
    return lines[-1] if lines else "no log"


def main() -> None:
    # click's exceptions are reached through typer (which may vendor its own click): usage errors carry
    # format_message() and exit_code; they are shortened to one line instead of a usage box.
    try:
        code = app(prog_name="vcom", standalone_mode=False)
    except Exception as exc:
        name = type(exc).__name__
        if name == "NoArgsIsHelpError":
            exc.show()  # type: ignore[attr-defined]
            raise SystemExit(2) from None
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            fail(" ".join(exc.format_message().split()), exc.exit_code)
        if name == "Abort":
            fail("aborted", 130)
        raise
    raise SystemExit(code if isinstance(code, int) else 0)
