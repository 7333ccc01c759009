"""Status snapshots made by vcom's own objects, for tests of what reads them.

The metrics endpoint and the live view read ``Manager.snapshot()`` (the same
object ``vcom status --json`` prints).  Tests of those readers start from a
snapshot made here by the real classes, not from hand-written dicts, and
change values only through :func:`with_values`, which refuses a key the real
status does not have: a key renamed in ``Port.status()`` or ``Share.status()``
fails those tests instead of leaving them green against a format that no
longer exists.

:func:`real_snapshot` builds, on one asyncio loop, what a manager would hold:

- a working port (``Port`` on a real pty, its link connected over raw TCP to
  a server on 127.0.0.1, opened by a "program" that set 9600 baud while
  ``--baud 115200 --pin-baud`` pins the rate), and
- a port whose entry could not be started (the manager's failed status),
- a ``Share`` of ``sim:echo`` with one TCP client.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import termios
import tty
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vcom.config import PortConfig
from vcom.link import LinkState
from vcom.manager import Manager, SlaveWatcher
from vcom.paths import Paths
from vcom.port import LinkGroup, Port
from vcom.share import Share, ShareConfig

_WAIT = 10.0  # a bound on each wait, not a measured time


def real_snapshot(workdir: Path) -> dict[str, Any]:
    """``Manager.snapshot()`` over real objects, as it crosses the control socket (JSON)."""
    return json.loads(json.dumps(asyncio.run(_build(workdir))))


async def _until(predicate: Callable[[], object], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _WAIT
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def _build(workdir: Path) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    workdir.mkdir(parents=True, exist_ok=True)
    peers: list[asyncio.StreamWriter] = []
    server = await asyncio.start_server(lambda _reader, writer: peers.append(writer), "127.0.0.1", 0)
    remote = server.sockets[0].getsockname()[1]
    watcher = SlaveWatcher(loop)
    working = PortConfig(device=str(workdir / "ttyV0"), target=f"tcp://127.0.0.1:{remote}", baud=115200,
                         pin_baud=True)
    failed = PortConfig(device=str(workdir / "ttyV1"), target="rfc2217://192.0.2.9:4002")  # never started
    port = Port(working, LinkGroup(working), watcher.watch)
    port.start()
    share = Share(ShareConfig(device="sim:echo", protocol="tcp"))
    await share.start()
    client: asyncio.StreamWriter | None = None
    program = -1
    try:
        _, client = await asyncio.open_connection("127.0.0.1", share.port)
        program = os.open(working.device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(program)
        attrs = termios.tcgetattr(program)
        attrs[4] = attrs[5] = termios.B9600
        termios.tcsetattr(program, termios.TCSANOW, attrs)
        await _until(lambda: port.is_open and port.link.state is LinkState.CONNECTED and peers,
                     "the port open and connected")
        await _until(lambda: port.settings.baud == 9600, "the program's 9600 baud seen")
        await _until(lambda: len(share.status()["clients"]) == 1, "the share's client")
        manager = Manager(Paths(*(workdir / name for name in ("c.toml", "s", "p", "l", "ls", "lib"))))
        manager._configs = {working.device: working, failed.device: failed}
        manager.ports = {working.device: port}
        manager._share_configs = {share.config.device: share.config}
        manager.shares = {share.config.device: share}
        return manager.snapshot()
    finally:
        if program >= 0:
            os.close(program)
        if client is not None:
            client.close()
        await port.close()
        await share.close()
        for writer in peers:
            writer.close()
        server.close()
        await server.wait_closed()
        watcher.close()


def with_values(real: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of a real status with some values changed; every changed key must exist in it.

    Nested objects (``signals``, ``line_errors``, ``settings``...) are changed
    key by key under the same rule; a ``None`` in the real status (an
    unanswered value) may become an object.
    """
    out = copy.deepcopy(real)
    for key, value in changes.items():
        assert key in real, f"status has no {key!r} (it has {sorted(real)})"
        if isinstance(value, dict) and isinstance(real[key], dict):
            out[key] = with_values(real[key], **value)
        else:
            out[key] = value
    return out
