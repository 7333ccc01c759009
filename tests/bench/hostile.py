"""Hostile RFC 2217 servers for the bench's fairness figure, each as fast as the socket takes it.

    python hostile.py MODE     prints the port it listens on (127.0.0.1), then serves until killed

- ``random``: random bytes without end (telnet commands among them by chance); reads and drops.
- ``dowill``: DO and WILL of unknown options without end, and never reads the answers.
- ``subneg``: opens a COM-PORT-OPTION subnegotiation and never closes it.
"""

from __future__ import annotations

import random
import socket
import sys
import threading


def chunks(mode: str) -> list[bytes]:
    rng = random.Random(2217)
    if mode == "random":
        return [rng.randbytes(65536) for _ in range(16)]
    if mode == "dowill":
        return [bytes((255, 253, 99, 255, 251, 98)) * 10922]
    if mode == "subneg":
        return [bytes(b for b in rng.randbytes(70000) if b != 255)[:65536]]
    raise SystemExit(f"hostile.py: unknown mode {mode}")


def serve(client: socket.socket, mode: str, data: list[bytes]) -> None:
    try:
        if mode == "subneg":
            client.sendall(bytes((255, 250, 44, 1)))  # IAC SB COM-PORT-OPTION SET-BAUDRATE, never IAC SE
        client.setblocking(mode == "dowill")  # dowill never reads: blocking sends are all it does
        i = 0
        while True:
            if mode != "dowill":
                try:
                    while client.recv(65536):  # take what the client says, so that it never blocks
                        pass
                    return  # the client closed
                except BlockingIOError:
                    pass
                client.setblocking(True)
            client.sendall(data[i % len(data)])
            if mode != "dowill":
                client.setblocking(False)
            i += 1
    except OSError:
        pass
    finally:
        client.close()


def main(mode: str) -> None:
    data = chunks(mode)
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    print(server.getsockname()[1], flush=True)
    while True:
        client, _ = server.accept()
        threading.Thread(target=serve, args=(client, mode, data), daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1])
