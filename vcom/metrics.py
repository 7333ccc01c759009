"""Prometheus metrics for ports and shares, served from the manager's event loop.

The numbers already exist: every port and share reports them in the status
dict that ``vcom status --json`` prints (``{"ports": [...], "shares": [...]}``).
So nothing here counts anything.  A custom collector calls a ``snapshot()``
function at scrape time and turns that dict into metric families; the values
are as fresh as the scrape and there is no second set of counters to keep in
step with the first.

prometheus_client's own HTTP server runs in a thread of its own, and the
manager is one asyncio loop with no threads.  So this module answers
``GET /metrics`` itself with ``asyncio.start_server``: one request per
connection (``Connection: close``), request line and headers bounded in size,
count and time, then ``generate_latest(registry)`` as the body.

Labels: ``device`` (the port's path, or the shared device) and ``target`` (the
port's remote) or ``listen`` (the share's address).  A value the status does
not have (a port that failed to start has no traffic counters; a modem line
the remote never reported is ``None``) is left out rather than reported as 0.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .target import TargetError, split_host_port

log = logging.getLogger(__name__)

Snapshot = Callable[[], Mapping[str, Any]]

# What generate_latest writes: the classic text format (newer clients call the
# same string CONTENT_TYPE_PLAIN_0_0_4; older ones CONTENT_TYPE_LATEST).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METRICS_PATH = "/metrics"

_LINE_LIMIT = 8192  # request line or one header; a scraper sends far less
_MAX_HEADERS = 100
_REQUEST_TIMEOUT = 10.0  # a client that sends nothing cannot hold a connection open for ever

_PORT_COUNTERS = (
    # (status key, metric name without _total, help)
    ("bytes_to_remote", "vcom_port_bytes_to_remote", "Bytes sent from the program to the remote."),
    ("bytes_from_remote", "vcom_port_bytes_from_remote", "Bytes received from the remote for the program."),
    ("dropped_bytes", "vcom_port_dropped_bytes", "Bytes from the remote dropped because no program had the port open."),
    ("connects", "vcom_port_connects", "Connections established to the remote."),
    ("reconnects", "vcom_port_reconnects", "Connections re-established after a loss."),
    ("hangups", "vcom_port_hangups", "Hang-ups delivered to the program."),
    ("lost_bytes", "vcom_port_lost_bytes",
     "Bytes written by the program that never reached the remote: unacknowledged when a connection died, or "
     "not sent within closing_wait after the program closed."),
    ("timeouts", "vcom_port_timeouts", "Connections ended because the remote did not answer within peer_timeout."),
    ("bound_disconnects", "vcom_port_bound_disconnects",
     "Connections vcom closed because the remote went past a bound (a flood, answers it never read)."),
)
_SHARE_COUNTERS = (
    ("refused_clients", "vcom_share_refused_clients",
     "Clients refused: the share was full, the client's address had max_clients_per_address, or the device gone."),
    ("slow_disconnects", "vcom_share_slow_disconnects", "Clients disconnected for not keeping up."),
    ("denied_clients", "vcom_share_denied_clients", "Connections refused because their address is not in --allow."),
    ("tls_failures", "vcom_share_tls_failures", "Connections whose TLS handshake failed or timed out."),
    ("idle_disconnects", "vcom_share_idle_disconnects", "Clients disconnected after idle_timeout without traffic."),
    ("lost_bytes", "vcom_share_lost_bytes", "Bytes for clients that were unacknowledged or queued when they left."),
)
_SHARE_DEVICE_COUNTERS = (
    # device_stats keys: bytes_in was written to the device, bytes_out was read from it.
    ("bytes_in", "vcom_share_bytes_to_device", "Bytes written to the shared device."),
    ("bytes_out", "vcom_share_bytes_from_device", "Bytes read from the shared device."),
    ("dropped", "vcom_share_device_dropped_bytes", "Bytes the shared device dropped."),
)
_LINES = ("dtr", "rts", "cts", "dsr", "dcd", "ri")


class MetricsError(ValueError):
    pass


# -- collector -------------------------------------------------------------------------------


class StatusCollector:
    """A prometheus_client collector reading the manager's status at scrape time."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        status = self._snapshot()
        yield from port_metrics(list(status.get("ports") or []))
        yield from share_metrics(list(status.get("shares") or []))


def port_metrics(ports: list[Mapping[str, Any]]) -> Iterator[Metric]:
    labels = ["device", "target"]
    counters = {key: CounterMetricFamily(name, text, labels=labels) for key, name, text in _PORT_COUNTERS}
    line_errors = CounterMetricFamily(
        "vcom_port_line_errors", "Line errors the remote reported (RFC 2217 NOTIFY-LINESTATE).",
        labels=[*labels, "kind"])
    connected = GaugeMetricFamily("vcom_port_connected", "1 while connected to the remote.", labels=labels)
    is_open = GaugeMetricFamily("vcom_port_open", "1 while a program has the port open.", labels=labels)
    signal = GaugeMetricFamily("vcom_port_signal", "Modem line levels; absent while unknown.",
                               labels=[*labels, "line"])
    baud = GaugeMetricFamily("vcom_port_baud", "Speed in force on the remote line.", labels=labels)
    tls_info = GaugeMetricFamily("vcom_port_tls_info", "1 for a TLS port: the session of its last handshake.",
                                 labels=[*labels, "version", "cipher", "verified"])
    tls_expiry = GaugeMetricFamily("vcom_port_tls_cert_not_after_seconds",
                                   "When the server's certificate expires (Unix time).", labels=labels)
    for port in ports:
        values = [str(port.get("device", "")), str(port.get("target", ""))]
        for key, family in counters.items():
            _add_number(family, values, port.get(key))
        for kind, count in sorted((port.get("line_errors") or {}).items()):
            _add_number(line_errors, [*values, kind], count)
        connected.add_metric(values, 1.0 if port.get("state") == "connected" else 0.0)
        is_open.add_metric(values, 1.0 if port.get("open") else 0.0)
        _add_signals(signal, values, port.get("signals"))
        settings = port.get("effective_settings") or port.get("settings") or {}
        _add_number(baud, values, settings.get("baud"))
        tls = port.get("tls")
        if isinstance(tls, Mapping):
            tls_info.add_metric([*values, str(tls.get("version") or ""), str(tls.get("cipher") or ""),
                                 "false" if tls.get("insecure") else "true"], 1.0)
            _add_number(tls_expiry, values, _epoch((tls.get("peer") or {}).get("not_after")))
    yield from counters.values()
    yield from (line_errors, connected, is_open, signal, baud, tls_info, tls_expiry)


def share_metrics(shares: list[Mapping[str, Any]]) -> Iterator[Metric]:
    labels = ["device", "listen"]
    counters = {key: CounterMetricFamily(name, text, labels=labels) for key, name, text in _SHARE_COUNTERS}
    device_counters = {key: CounterMetricFamily(name, text, labels=labels)
                       for key, name, text in _SHARE_DEVICE_COUNTERS}
    clients = GaugeMetricFamily("vcom_share_clients", "Clients connected now.", labels=labels)
    queued = GaugeMetricFamily("vcom_share_queued_bytes", "Bytes waiting to be sent to clients.", labels=labels)
    device_open = GaugeMetricFamily("vcom_share_device_open", "1 while the shared device is open.", labels=labels)
    paused = GaugeMetricFamily("vcom_share_device_paused",
                               "1 while the device is not read because every client is full.", labels=labels)
    signal = GaugeMetricFamily("vcom_share_signal", "Modem line levels of the shared device; absent while unknown.",
                               labels=[*labels, "line"])
    baud = GaugeMetricFamily("vcom_share_baud", "Speed of the shared device.", labels=labels)
    tls_expiry = GaugeMetricFamily("vcom_share_tls_cert_not_after_seconds",
                                   "When the share's own certificate expires (Unix time).", labels=labels)
    for share in shares:
        values = [str(share.get("device", "")), str(share.get("listen", ""))]
        for key, family in counters.items():
            _add_number(family, values, share.get(key))
        stats = share.get("device_stats") or {}
        for key, family in device_counters.items():
            _add_number(family, values, stats.get(key))
        share_clients = list(share.get("clients") or [])
        clients.add_metric(values, float(len(share_clients)))
        queued.add_metric(values, float(sum(int(c.get("queued") or 0) for c in share_clients)))
        device_open.add_metric(values, 1.0 if share.get("device_state") == "open" else 0.0)
        paused.add_metric(values, 1.0 if share.get("device_paused") else 0.0)
        _add_signals(signal, values, share.get("signals"))
        _add_number(baud, values, (share.get("settings") or {}).get("baud"))
        tls = share.get("tls")
        if isinstance(tls, Mapping):
            _add_number(tls_expiry, values, _epoch((tls.get("certificate") or {}).get("not_after")))
    yield from counters.values()
    yield from device_counters.values()
    yield from (clients, queued, device_open, paused, signal, baud, tls_expiry)


def _add_number(family: Metric, values: list[str], value: object) -> None:
    # bool is an int: a stray True must not become a counter value of 1.
    if isinstance(value, int | float) and not isinstance(value, bool):
        family.add_metric(values, float(value))  # type: ignore[attr-defined]


def _epoch(text: object) -> float | None:
    """``2030-01-01T00:00:00Z`` (how status writes times) as Unix time."""
    if not isinstance(text, str):
        return None
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


def _add_signals(family: GaugeMetricFamily, values: list[str], signals: object) -> None:
    if not isinstance(signals, Mapping):
        return
    for line in _LINES:
        level = signals.get(line)
        if isinstance(level, bool):
            family.add_metric([*values, line], 1.0 if level else 0.0)


def make_registry(snapshot: Snapshot) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(snapshot))
    return registry


# -- HTTP ------------------------------------------------------------------------------------


def parse_addr(addr: str) -> tuple[str | None, int]:
    """``host:port`` or ``[v6]:port`` to what ``start_server`` takes.

    An empty host (``:9817``) means every interface, as for other exporters.
    """
    try:
        host, port_text = split_host_port(addr.strip(), addr)
    except TargetError as exc:
        raise MetricsError(f"metrics address: {exc}") from None
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise MetricsError(f"{port_text!r} is not a port number in {addr!r}")
    return (host or None), int(port_text)


async def start_metrics(addr: str, snapshot: Snapshot) -> asyncio.Server:
    """Serve ``GET /metrics`` on ``addr``; close the returned server to stop.

    The bound port (useful with port 0) is ``server.sockets[0].getsockname()[1]``.
    """
    host, port = parse_addr(addr)
    registry = make_registry(snapshot)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body, head_only = await _answer(reader, registry)
            await _respond(writer, status, body, head_only)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the scraper went away: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host, port, limit=_LINE_LIMIT, reuse_address=True)
    log.info("metrics on http://%s%s", addr, METRICS_PATH)
    return server


async def _answer(reader: asyncio.StreamReader, registry: CollectorRegistry) -> tuple[int, bytes, bool]:
    """Read one request; (status, body, whether to omit the body)."""
    try:
        async with asyncio.timeout(_REQUEST_TIMEOUT):  # not wait_for: see vcom.link.Link._run
            request = await _read_request(reader)
    except (TimeoutError, ValueError, asyncio.LimitOverrunError):
        return 400, b"bad request\n", False
    if request is None:
        return 400, b"bad request\n", False
    method, target = request
    path = target.split("?", 1)[0]
    if path != METRICS_PATH:
        return 404, b"not found: try /metrics\n", method == "HEAD"
    if method not in ("GET", "HEAD"):
        return 405, b"only GET\n", False
    try:
        body = generate_latest(registry)
    except Exception:  # a broken snapshot must not take the manager down with it
        log.exception("collecting metrics failed")
        return 500, b"collecting metrics failed; see the manager's log\n", False
    return 200, body, method == "HEAD"


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str] | None:
    """(method, target) of an HTTP/1.x request, headers read and ignored; None if malformed."""
    parts = (await reader.readuntil(b"\n")).decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    for _ in range(_MAX_HEADERS):
        if not (await reader.readuntil(b"\n")).strip():
            return parts[0], parts[1]
    return None  # too many headers


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error"}


async def _respond(writer: asyncio.StreamWriter, status: int, body: bytes, head_only: bool) -> None:
    content_type = CONTENT_TYPE if status == 200 else "text/plain; charset=utf-8"
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    writer.write(head.encode("ascii") + (b"" if head_only else body))
    await writer.drain()
