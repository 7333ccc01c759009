"""Servers that flood their client, for the fairness tests: each a process of its own, as fast as the
socket takes it.

- ``commands``: an RFC 2217 server gone wrong: DO and WILL of unknown options, without end, never
  reading what the client answers (each command costs the client a decision and an answer).
- ``random``: random bytes without end (telnet commands among them by chance); reads and drops.
- ``echo``: a plain raw TCP echo, for the healthy ports beside them.

The flooding modes write to ``status``, as they go, what they sent so far and what their sockets still
hold for the client (SIOCOUTQ): a flood whose client reads slowly still has bytes waiting.

Run as ``python flood_peers.py MODE STATUS``; the listening port is learnt from /proc by the test.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import select
import socket
import sys
import termios
import threading
import time
from pathlib import Path

from peers import PYTHON, PeerProcess

_CHUNK = 65536


class FloodServer(PeerProcess):
    MODES = ("commands", "random", "echo")

    def __init__(self, workdir: Path, mode: str) -> None:
        assert mode in self.MODES, mode
        self.name = f"flood-{mode}"
        super().__init__(workdir)
        self.mode = mode
        self.status_path = workdir / f"{self.name}.sent"

    def command(self) -> list[str]:
        return [PYTHON, str(Path(__file__).resolve()), self.mode, str(self.status_path)]

    def _status(self) -> tuple[int, int]:
        try:
            sent, waiting = self.status_path.read_text().split()
            return int(sent), int(waiting)
        except (FileNotFoundError, ValueError):
            return 0, 0

    def sent(self) -> int:
        return self._status()[0]

    def waiting(self) -> int:
        """Bytes the server's sockets hold that the client has not taken yet."""
        return self._status()[1]


def _flood(client: socket.socket, mode: str, counter: list[int]) -> None:
    rng = random.Random(2217)
    chunks = ([bytes((255, 253, 99, 255, 251, 98)) * (_CHUNK // 6)] if mode == "commands"
              else [rng.randbytes(_CHUNK) for _ in range(8)])
    i = 0
    try:
        while True:
            if mode == "random":
                while select.select([client], [], [], 0)[0]:
                    if not client.recv(_CHUNK):
                        return
            client.sendall(chunks[i % len(chunks)])
            counter[0] += len(chunks[i % len(chunks)])
            i += 1
    except OSError:
        pass
    finally:
        client.close()


def _echo(client: socket.socket) -> None:
    try:
        while data := client.recv(_CHUNK):
            client.sendall(data)
    except OSError:
        pass
    finally:
        client.close()


def main(mode: str, status: str) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    counter = [0]
    clients: list[socket.socket] = []

    def report() -> None:
        while True:
            waiting = 0
            for client in list(clients):
                with contextlib.suppress(OSError, ValueError):
                    raw = fcntl.ioctl(client.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
                    waiting += int.from_bytes(raw, sys.byteorder)
            tmp = f"{status}.tmp"
            with open(tmp, "w") as out:
                out.write(f"{counter[0]} {waiting}")
            os.replace(tmp, status)
            time.sleep(0.1)

    if mode != "echo":
        threading.Thread(target=report, daemon=True).start()
    while True:
        client, _ = server.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        clients.append(client)
        target = _echo if mode == "echo" else _flood
        args = (client,) if mode == "echo" else (client, mode, counter)
        threading.Thread(target=target, args=args, daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
