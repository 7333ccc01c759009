"""``vcom share``: a local serial device (or a simulated one) served to network clients, by the manager
(kept in the config file) or, with ``--foreground``, by this process alone (what vcom-share@.service runs).
Every setting is checked here, before a manager is started."""

from __future__ import annotations

import os
import shlex
import sys
from typing import TYPE_CHECKING, Annotated

from . import command
from .background import _ensure_manager
from .common import (
    _ask,
    _check_tls_files,
    _choices,
    _converted,
    _number,
    _required,
    _typed,
    _whole,
    fail,
    fail_option,
)

if TYPE_CHECKING:
    import typer  # set in this module by _typer_app(): `vcom add DEVICE TARGET` does without it (see quickargs)

    from ..config import ShareConfig


def parse_listen(text: str) -> tuple[str, int]:
    """``PORT``, ``:PORT``, ``HOST:PORT`` or ``[V6]:PORT``; the host defaults to loopback.

    Port 0 lets the kernel pick a free port; the answer names the one bound.
    """
    from ..config import ShareError
    from ..target import TargetError, split_host_port

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
    from ..config import ShareConfig, ShareError

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
    from ..config import tls_files
    from ..portpath import files_seen

    # What the manager must see as this command does (it may run in a mount namespace of its own).
    device_path = None if config.device.startswith("sim:") else config.device
    files = files_seen([device_path, *(path for _, path in tls_files(config))])
    answer = _ask("share", share=config.to_json(), seen_files=files)
    over = " over TLS" if config.server_tls else ""
    print(f"{device} shared as {protocol}{over} on {answer['share']['listen']}")
    for warning in answer["share"].get("warnings") or []:
        print(f"vcom: warning: {warning}", file=sys.stderr)


def _share_in_foreground(config: ShareConfig) -> None:
    import asyncio
    import logging
    import signal

    from ..config import ShareError
    from ..sdnotify import notify
    from ..share import Share

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def serve() -> None:
        from ..fdlimit import quiet_accept_errors

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
