"""connects and reconnects mean what they say: every connection made, and those made after a loss.

A raw TCP server in this process counts the connections vcom makes; a program opens and closes the
port as often as it likes (each open of an on-open port is a new connection, not a reconnect), then
the server drops the connection under an open port (what follows is a reconnect).
"""

from __future__ import annotations

import io
import os
import socket
import threading
from pathlib import Path

from peers import Vcom, open_program, wait_until
from rich.console import Console

from vcom.dashboard import Dashboard


class CountingServer:
    """Accepts TCP connections on 127.0.0.1 and keeps them until told to drop them."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.accepted.append(conn)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.accepted)

    def drop_all(self) -> None:
        with self._lock:
            for conn in self.accepted:
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.listener.close()
        self.drop_all()


def test_opens_are_connects_and_only_a_loss_makes_a_reconnect(vcom: Vcom, tmp_path: Path) -> None:
    server = CountingServer()
    try:
        port = tmp_path / "ttyV0"
        vcom.add(port, f"tcp://127.0.0.1:{server.port}", "--linger", "0")
        for opened in range(1, 4):
            fd = open_program(port)
            vcom.wait_status(port, lambda s, n=opened: s["state"] == "connected" and s["connects"] == n,
                             what=f"connection {opened}")
            os.close(fd)
            vcom.wait_status(port, lambda s: s["state"] == "idle", what="disconnected after the close")
        # The server's accept thread may take a moment after the kernel completed the connection.
        wait_until(lambda: server.count == 3, 10, "the server to accept the third connection")
        status = vcom.status(port)
        assert (status["connects"], status["reconnects"], server.count) == (3, 0, 3)

        fd = open_program(port)
        try:
            vcom.wait_status(port, lambda s: s["state"] == "connected" and s["connects"] == 4, what="connection 4")
            wait_until(lambda: server.count == 4, 10, "the server to accept the fourth connection")
            server.drop_all()  # the server goes away under an open port
            status = vcom.wait_status(port, lambda s: s["state"] == "connected" and s["connects"] == 5,
                                      timeout=30, what="reconnected after the loss")
            assert status["reconnects"] == 1
        finally:
            os.close(fd)
    finally:
        server.close()


def test_live_view_shows_connects_and_reconnects() -> None:
    dashboard = Dashboard()
    dashboard.update({"ports": [{"device": "/dev/ttyV1", "state": "connected", "connects": 17, "reconnects": 2,
                                 "signals": None}]}, now=0.0)
    console = Console(record=True, width=160, height=20, file=io.StringIO(), color_system=None)
    console.print(dashboard.render(160, 20))
    text = console.export_text()
    header = next(line for line in text.splitlines() if "conn" in line.split())
    row = next(line for line in text.splitlines() if line.startswith("/dev/ttyV1"))
    columns = header.split()
    assert columns.index("conn") + 1 == columns.index("rc")
    assert row.split()[-2:] == ["17", "2"]
