"""Peers for the UART-fidelity tests: a scripted RFC 2217 server and the dialing program.

- :class:`LineStateServer` is a small RFC 2217 server written here, so that
  a test controls exactly which NOTIFY-LINESTATE and NOTIFY-MODEMSTATE a
  client receives (no real server can be made to report a framing error on
  a pty).  It agrees to BINARY, SGA and COM-PORT-OPTION, answers every SET
  with the value asked for (RFC 2217: the answer is the value in force),
  applies the client's masks as RFC 2217 requires (``state & mask``, sent
  only when non-zero; the initial LINESTATE-MASK is 0), and records every
  byte each way in the same JSON-lines form as ``peers.WireProxy``.
- :class:`Dialer` runs ``uart_dialer.py``: a program that dials a modem on
  a port that is its controlling tty and reports how it was hung up.

Like the servers in ``peers.py``, the line-state server runs as a separate
process (this file as a script) so that a test can block on its own I/O.
Its telnet decoding is ``peers.decode_telnet``: independent of vcom's codec.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peers import (
    COM_PORT_OPTION,
    DO,
    DONT,
    IAC,
    PYTHON,
    SB,
    SE,
    WILL,
    WONT,
    Item,
    Negotiation,
    PeerProcess,
    Subnegotiation,
    decode_telnet,
)

HERE = Path(__file__).resolve().parent

BINARY, SGA = 0, 3
# RFC 2217 command codes used here (client to server; the server answers with +100).
SIGNATURE = 0
NOTIFY_LINESTATE, NOTIFY_MODEMSTATE = 6, 7
SET_LINESTATE_MASK, SET_MODEMSTATE_MASK, PURGE_DATA = 10, 11, 12
SERVER_OFFSET = 100

# RFC 2217 NOTIFY-LINESTATE bits.
LINE_BREAK, LINE_FRAMING, LINE_PARITY, LINE_OVERRUN = 0x10, 0x08, 0x04, 0x02
# RFC 2217 NOTIFY-MODEMSTATE bits.
MODEM_CD, MODEM_RI, MODEM_DSR, MODEM_CTS = 0x80, 0x40, 0x20, 0x10

_CHUNK = 65536


def subnegotiation(command: int, value: bytes) -> bytes:
    """``IAC SB COM-PORT-OPTION command value IAC SE`` with every 0xFF in the value doubled (RFC 2217)."""
    body = bytes([command]) + value
    return bytes([IAC, SB, COM_PORT_OPTION]) + body.replace(b"\xff", b"\xff\xff") + bytes([IAC, SE])


# ---------------------------------------------------------------------------
# The scripted server (runs as a process)


@dataclass
class _Client:
    """One connection: what it sent so far and how far the server has acted on it."""

    sock: socket.socket
    conn: int
    received: bytearray = field(default_factory=bytearray)
    handled: int = 0  # items of decode_telnet(received) already acted on
    agreed: set[tuple[int, int]] = field(default_factory=set)  # (verb, option) already answered
    linestate_mask: int = 0  # RFC 2217: "The initial LINESTATE-MASK ... is 0"
    line_events_sent: bool = False


class _ScriptedServer:
    def __init__(self, port: int, record: str, line_states: list[int], modem_state: int) -> None:
        self.record = record
        self.line_states = line_states
        self.modem_state = modem_state
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(4)
        self.clients: dict[socket.socket, _Client] = {}
        # Connection numbers go on across restarts of the server on the same record.
        self.count = sum(1 for line in _read_lines(record) if '"open"' in line)

    def run(self) -> None:
        while True:
            readable, _, _ = select.select([self.listener, *self.clients], [], [])
            for sock in readable:
                if sock is self.listener:
                    self._accept()
                elif sock in self.clients:
                    self._read(self.clients[sock])

    def _accept(self) -> None:
        sock, _ = self.listener.accept()
        self.count += 1
        self.clients[sock] = _Client(sock, self.count)
        self._log({"event": "open", "conn": self.count})

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(_CHUNK)
        except OSError:
            data = b""
        if not data:
            self._log({"event": "close", "conn": client.conn, "by": "c"})
            del self.clients[client.sock]
            client.sock.close()
            return
        self._log({"event": "data", "conn": client.conn, "dir": "c2s", "hex": data.hex()})
        client.received += data
        # Re-decoding the whole stream keeps the parser trivially correct across
        # chunk boundaries; the streams of these tests are a few hundred bytes.
        items = decode_telnet(bytes(client.received))
        reply = b"".join(self._answer(client, item) for item in items[client.handled :])
        client.handled = len(items)
        if reply:
            self._log({"event": "data", "conn": client.conn, "dir": "s2c", "hex": reply.hex()})
            with contextlib.suppress(OSError):
                client.sock.sendall(reply)

    def _answer(self, client: _Client, item: Item) -> bytes:
        if isinstance(item, Negotiation):
            return self._negotiate(client, item)
        if isinstance(item, Subnegotiation) and item.option == COM_PORT_OPTION:
            return self._command(client, item.command, item.value)
        return b""

    def _negotiate(self, client: _Client, item: Negotiation) -> bytes:
        # Answer each request once (RFC 854 loop avoidance): agree to BINARY and SGA
        # both ways and to the client's WILL COM-PORT-OPTION; refuse the rest.
        if (item.verb, item.option) in client.agreed or item.verb in (WONT, DONT):
            return b""
        client.agreed.add((item.verb, item.option))
        if item.verb == WILL:
            ok = item.option in (BINARY, SGA, COM_PORT_OPTION)
            return bytes([IAC, DO if ok else DONT, item.option])
        ok = item.option in (BINARY, SGA)
        return bytes([IAC, WILL if ok else WONT, item.option])

    def _command(self, client: _Client, command: int, value: bytes) -> bytes:
        answer = command + SERVER_OFFSET
        if command == SIGNATURE:
            return subnegotiation(answer, b"uart-test") if not value else b""
        if command == SET_LINESTATE_MASK and value:
            client.linestate_mask = value[0]
            return subnegotiation(answer, value[:1]) + self._line_events(client)
        if command == SET_MODEMSTATE_MASK and value:
            state = self.modem_state & value[0]
            notify = subnegotiation(NOTIFY_MODEMSTATE + SERVER_OFFSET, bytes([state])) if state else b""
            return subnegotiation(answer, value[:1]) + notify
        if 1 <= command <= 5 or command == PURGE_DATA:  # SET-BAUDRATE .. SET-CONTROL, PURGE-DATA
            return subnegotiation(answer, value)
        return b""

    def _line_events(self, client: _Client) -> bytes:
        """The scripted line events, once per connection, as the client's mask lets them through."""
        if client.line_events_sent or not client.linestate_mask:
            return b""
        client.line_events_sent = True
        return b"".join(
            subnegotiation(NOTIFY_LINESTATE + SERVER_OFFSET, bytes([state & client.linestate_mask]))
            for state in self.line_states
            if state & client.linestate_mask
        )

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.record, "a") as out:
            out.write(json.dumps(record) + "\n")


def _read_lines(path: str | Path) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []


class LineStateServer(PeerProcess):
    """The scripted RFC 2217 server on ``.port``; its record reads like a ``WireProxy``'s."""

    name = "linestate-server"

    def __init__(self, workdir: Path, line_states: list[int], modem_state: int = 0) -> None:
        super().__init__(workdir)
        self.line_states = line_states
        self.modem_state = modem_state
        self.record_path = workdir / "wire.jsonl"
        self.record_path.unlink(missing_ok=True)

    def command(self) -> list[str]:
        states = ",".join(str(state) for state in self.line_states)
        return [PYTHON, str(Path(__file__).resolve()), str(self.port), str(self.record_path), states,
                str(self.modem_state)]

    def records(self) -> list[dict[str, Any]]:
        # The last line may be half written while the server runs.
        return [json.loads(line) for line in _read_lines(self.record_path) if line.endswith("}")]

    def client_items(self, conn: int | None = None) -> list[Item]:
        """What the client sent, decoded; optionally of one connection only."""
        stream = b"".join(
            bytes.fromhex(r["hex"])
            for r in self.records()
            if r["event"] == "data" and r["dir"] == "c2s" and (conn is None or r["conn"] == conn)
        )
        return decode_telnet(stream)


# ---------------------------------------------------------------------------
# The dialing program


class Dialer:
    """``uart_dialer.py`` on a port, in a session of its own; ``stop()`` ends it whatever happened.

    ``start_new_session`` makes the child a session leader without a
    controlling tty, so that its plain ``open`` of the port (no O_NOCTTY)
    makes the port its controlling tty, as ``getty`` or ``pppd`` do.
    """

    def __init__(self, port: str | os.PathLike[str], *, clocal: bool, guard: float) -> None:
        command = [PYTHON, str(HERE / "uart_dialer.py"), str(port), "--guard", str(guard)]
        if clocal:
            command.append("--clocal")
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)

    def probe(self) -> None:
        """Ask the program to use its port once more (``AT`` -> ``OK``) and report."""
        assert self.proc.stdin is not None
        # A program that was hung up has already reported and gone: its report says so.
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write("probe\n")
            self.proc.stdin.flush()

    def report(self, timeout: float) -> dict[str, Any]:
        """The program's one-line JSON report, once it has exited."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"the dialing program did not finish within {timeout:g}s") from None
        assert self.proc.returncode == 0, f"dialer exited with {self.proc.returncode}: {err}"
        lines = out.strip().splitlines()
        assert lines, f"dialer reported nothing; stderr: {err}"
        return json.loads(lines[-1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.communicate(timeout=10)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="scripted RFC 2217 server for the UART tests")
    parser.add_argument("port", type=int)
    parser.add_argument("record")
    parser.add_argument("line_states", help="comma-separated NOTIFY-LINESTATE values, sent once per connection")
    parser.add_argument("modem_state", type=int, help="NOTIFY-MODEMSTATE value sent when the mask is set")
    args = parser.parse_args(argv)
    states = [int(state) for state in args.line_states.split(",") if state]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _ScriptedServer(args.port, args.record, states, args.modem_state).run()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(sys.argv[1:])
