"""Tests of vcom.metrics: real HTTP on 127.0.0.1, parsed with prometheus_client's own parser.

The server runs on the test's asyncio loop; urllib is blocking, so each scrape
runs in the loop's executor (test code only: the product serves from the loop).
"""

from __future__ import annotations

import asyncio
import copy
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from real_status import real_snapshot, with_values

from vcom.metrics import CONTENT_TYPE, MetricsError, parse_addr, start_metrics

_WAIT = 10.0  # a bound on each request, not a measured time

V0 = {"device": "/dev/ttyV0", "target": "rfc2217://127.0.0.1:4001"}
V1 = {"device": "/dev/ttyV1", "target": "tcp://192.0.2.9:4002"}
ECHO = {"device": "sim:echo", "listen": "127.0.0.1:7000"}


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real manager snapshot (see real_status.py) with known values put into the real keys."""
    real = real_snapshot(tmp_path_factory.mktemp("real"))
    working, failed = real["ports"]
    (share,) = real["shares"]
    port = with_values(
        working, **V0, state="connected", open=True,
        settings={"baud": 9600}, effective_settings={"baud": 115200},
        signals={"dtr": True, "rts": False, "cts": True, "dsr": None, "dcd": False, "ri": None},
        line_errors={"overrun": 2, "parity": 0, "framing": 5, "break": 1},
        bytes_to_remote=1234, bytes_from_remote=5678, dropped_bytes=9, connects=4, reconnects=3, hangups=1)
    failed = with_values(failed, **V1)
    (client,) = share["clients"]
    share = with_values(
        share, **ECHO, device_state="open", settings={"baud": 19200},
        signals={"dtr": True, "rts": True, "cts": None, "dsr": True, "dcd": True, "ri": False},
        device_stats={"bytes_in": 10, "bytes_out": 20, "breaks": 0, "dropped": 3}, device_paused=False,
        clients=[with_values(client, peer="127.0.0.1:5000", queued=7), with_values(client, peer="127.0.0.1:5001",
                                                                                    queued=8)],
        refused_clients=2, slow_disconnects=1)
    return {"ports": [port, failed], "shares": [share]}


def test_the_snapshot_is_the_real_format(snapshot: dict[str, Any]) -> None:
    """What the other tests read is what Port.status(), Share.status() and the manager produce."""
    port, failed = snapshot["ports"]
    assert port["pinned"] == ["baud"] and port["pty"].startswith("/dev/pts/")
    assert failed["state"] == "failed" and failed["open"] is False and failed["last_error"]
    assert snapshot["shares"][0]["protocol"] == "tcp"


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def run(scenario: Callable[[str, dict[str, Any]], Awaitable[None]], snapshot: dict[str, Any] | Callable[[], dict]
        ) -> None:
    """Start the server on an ephemeral port, run the scenario, close the server."""
    state = copy.deepcopy(snapshot) if isinstance(snapshot, dict) else {}

    async def main() -> None:
        server = await start_metrics("127.0.0.1:0", snapshot if callable(snapshot) else (lambda: state))
        try:
            port = server.sockets[0].getsockname()[1]
            await scenario(f"http://127.0.0.1:{port}", state)
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


async def fetch(url: str, method: str = "GET") -> tuple[int, str, bytes]:
    def blocking() -> tuple[int, str, bytes]:
        request = urllib.request.Request(url, method=method)
        try:
            with urllib.request.urlopen(request, timeout=_WAIT) as response:
                return response.status, response.headers["Content-Type"], response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["Content-Type"], exc.read()

    return await asyncio.get_running_loop().run_in_executor(None, blocking)


async def scrape(base: str) -> Samples:
    status, content_type, body = await fetch(base + "/metrics")
    assert status == 200 and content_type == CONTENT_TYPE
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


def test_port_metrics(snapshot: dict[str, Any]) -> None:
    async def scenario(base: str, state: dict[str, Any]) -> None:
        s = await scrape(base)
        assert s[key("vcom_port_bytes_to_remote_total", **V0)] == 1234
        assert s[key("vcom_port_bytes_from_remote_total", **V0)] == 5678
        assert s[key("vcom_port_dropped_bytes_total", **V0)] == 9
        assert s[key("vcom_port_reconnects_total", **V0)] == 3
        assert s[key("vcom_port_connects_total", **V0)] == 4
        assert s[key("vcom_port_hangups_total", **V0)] == 1
        assert s[key("vcom_port_line_errors_total", kind="framing", **V0)] == 5
        assert s[key("vcom_port_line_errors_total", kind="parity", **V0)] == 0
        assert s[key("vcom_port_connected", **V0)] == 1
        assert s[key("vcom_port_open", **V0)] == 1
        assert s[key("vcom_port_baud", **V0)] == 115200  # what is in force, pins included
        assert s[key("vcom_port_signal", line="dtr", **V0)] == 1
        assert s[key("vcom_port_signal", line="rts", **V0)] == 0
        assert key("vcom_port_signal", line="dsr", **V0) not in s  # never reported: unknown, not low

    run(scenario, snapshot)


def test_failed_port_has_state_but_no_invented_counters(snapshot: dict[str, Any]) -> None:
    async def scenario(base: str, state: dict[str, Any]) -> None:
        s = await scrape(base)
        assert s[key("vcom_port_connected", **V1)] == 0
        assert s[key("vcom_port_open", **V1)] == 0
        assert not [k for k in s if k[0].endswith("_total") and dict(k[1]).get("device") == "/dev/ttyV1"]

    run(scenario, snapshot)


def test_share_metrics(snapshot: dict[str, Any]) -> None:
    async def scenario(base: str, state: dict[str, Any]) -> None:
        s = await scrape(base)
        assert s[key("vcom_share_clients", **ECHO)] == 2
        assert s[key("vcom_share_queued_bytes", **ECHO)] == 15
        assert s[key("vcom_share_refused_clients_total", **ECHO)] == 2
        assert s[key("vcom_share_slow_disconnects_total", **ECHO)] == 1
        assert s[key("vcom_share_bytes_to_device_total", **ECHO)] == 10
        assert s[key("vcom_share_bytes_from_device_total", **ECHO)] == 20
        assert s[key("vcom_share_device_dropped_bytes_total", **ECHO)] == 3
        assert s[key("vcom_share_device_open", **ECHO)] == 1
        assert s[key("vcom_share_device_paused", **ECHO)] == 0
        assert s[key("vcom_share_baud", **ECHO)] == 19200
        assert s[key("vcom_share_signal", line="dcd", **ECHO)] == 1
        assert key("vcom_share_signal", line="cts", **ECHO) not in s

    run(scenario, snapshot)


def test_values_are_read_at_scrape_time(snapshot: dict[str, Any]) -> None:
    async def scenario(base: str, state: dict[str, Any]) -> None:
        assert (await scrape(base))[key("vcom_port_bytes_to_remote_total", **V0)] == 1234
        state["ports"][0]["bytes_to_remote"] = 99999
        state["ports"][0]["state"] = "backoff"
        state["shares"][0]["clients"] = []
        s = await scrape(base)
        assert s[key("vcom_port_bytes_to_remote_total", **V0)] == 99999
        assert s[key("vcom_port_connected", **V0)] == 0
        assert s[key("vcom_share_clients", **ECHO)] == 0

    run(scenario, snapshot)


def test_empty_manager_scrapes() -> None:
    async def scenario(base: str, state: dict[str, Any]) -> None:
        s = await scrape(base)
        assert not [k for k in s if k[0].startswith("vcom_")]

    run(scenario, lambda: {"ports": [], "shares": []})


def test_wrong_path_and_method(snapshot: dict[str, Any]) -> None:
    async def scenario(base: str, state: dict[str, Any]) -> None:
        assert (await fetch(base + "/"))[0] == 404
        assert (await fetch(base + "/metricsx"))[0] == 404
        assert (await fetch(base + "/metrics", method="POST"))[0] == 405
        status, _, body = await fetch(base + "/metrics", method="HEAD")
        assert status == 200 and body == b""
        assert (await fetch(base + "/metrics?x=1"))[0] == 200

    run(scenario, snapshot)


async def raw_request(base: str, data: bytes) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), _WAIT)  # the server closes after one answer
    finally:
        writer.close()


@pytest.mark.parametrize("request_bytes", [
    b"garbage\r\n\r\n",
    b"GET /metrics\r\n\r\n",  # HTTP/0.9 style: no version
    b"GET /metrics SMTP/1.0\r\n\r\n",
    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n",  # longer than any line a scraper sends
    b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n",
])
def test_malformed_requests_get_400(request_bytes: bytes, snapshot: dict[str, Any]) -> None:
    async def scenario(base: str, state: dict[str, Any]) -> None:
        answer = await raw_request(base, request_bytes)
        assert answer.startswith(b"HTTP/1.1 400 ")

    run(scenario, snapshot)


def test_a_failing_snapshot_gives_500_and_the_server_lives(snapshot: dict[str, Any]) -> None:
    calls = []

    def failing_once() -> dict:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("status broke")
        return snapshot

    async def scenario(base: str, state: dict[str, Any]) -> None:
        assert (await fetch(base + "/metrics"))[0] == 500
        assert (await scrape(base))[key("vcom_port_open", **V0)] == 1

    run(scenario, failing_once)


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9817", ("127.0.0.1", 9817)),
    ("[::1]:9817", ("::1", 9817)),
    (":9817", (None, 9817)),
    ("localhost:0", ("localhost", 0)),
])
def test_parse_addr(text: str, expected: tuple[str | None, int]) -> None:
    assert parse_addr(text) == expected


@pytest.mark.parametrize("text", ["9817", "127.0.0.1", "::1:9817", "[::1]9817", "[nothost]:1", "h:70000", "h:x",
                                  "h:-1"])
def test_parse_addr_rejects(text: str) -> None:
    with pytest.raises(MetricsError):
        parse_addr(text)
