"""The link against a scripted RFC 2217 server on 127.0.0.1, in one asyncio loop:
FLOWCONTROL-SUSPEND/RESUME from the server hold our data back and let it go,
in order, and reconnects re-send the settings, masks and lines.

The server side is written with raw telnet bytes here (not vcom's codec), so
the link is checked against the RFC's bytes, not against itself.
"""

from __future__ import annotations

import asyncio

from vcom.link import Lines, Link
from vcom.settings import FlowControl, LineSettings, StopBits
from vcom.target import parse_target

IAC, SB, SE, WILL, DO = 255, 250, 240, 251, 253
COM = 44
SUSPEND, RESUME = 108, 109  # server -> client: FLOWCONTROL-SUSPEND / -RESUME (8 and 9, plus 100)


def sb(command: int, value: bytes = b"") -> bytes:
    return bytes([IAC, SB, COM, command]) + value.replace(b"\xff", b"\xff\xff") + bytes([IAC, SE])


class Listener:
    def __init__(self) -> None:
        self.data = bytearray()
        self.writable = asyncio.Event()
        self.blocked = asyncio.Event()

    def link_data(self, data: bytes) -> None:
        self.data += data

    def link_writable(self, writable: bool) -> None:
        (self.writable if writable else self.blocked).set()
        (self.blocked if writable else self.writable).clear()

    def link_changed(self) -> None:
        pass


class ScriptedServer:
    """Agrees to COM-PORT-OPTION and records everything the client sends, per connection."""

    def __init__(self) -> None:
        self.connections: list[bytearray] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.connected = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = bytearray()
        self.connections.append(received)
        self.writers.append(writer)
        writer.write(bytes([IAC, DO, COM, IAC, WILL, 0, IAC, DO, 0]))
        self.connected.set()
        while chunk := await reader.read(65536):
            received += chunk
        writer.close()


async def wait_for(predicate, what: str, timeout: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def run_with_server(test) -> None:
    script = ScriptedServer()
    server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    listener = Listener()
    link = Link(parse_target(f"127.0.0.1:{port}"), listener, name="test")
    try:
        await test(script, listener, link, server)
    finally:
        await link.stop()
        server.close()
        for writer in script.writers:
            writer.close()


def test_suspend_holds_our_data_until_resume():
    async def scenario(script: ScriptedServer, listener: Listener, link: Link, server) -> None:
        link.start()
        await asyncio.wait_for(listener.writable.wait(), 10)
        link.send(b"<before>")
        await wait_for(lambda: b"<before>" in script.connections[0], "data before the suspend")

        script.writers[0].write(sb(SUSPEND))
        await asyncio.wait_for(listener.blocked.wait(), 10)
        assert not link.writable
        assert link.status()["suspended"] is True

        script.writers[0].write(sb(RESUME))
        await asyncio.wait_for(listener.writable.wait(), 10)
        link.send(b"<after>")
        await wait_for(lambda: b"<after>" in script.connections[0], "data after the resume")
        assert script.connections[0].index(b"<before>") < script.connections[0].index(b"<after>")

    asyncio.run(run_with_server(scenario))


def test_every_reconnect_sends_masks_settings_and_lines_again():
    settings = LineSettings(baud=19200, stop_bits=StopBits.TWO, flow_out=FlowControl.RTSCTS,
                            flow_in=FlowControl.RTSCTS)
    expected = [
        sb(11, b"\xfb"),  # SET-MODEMSTATE-MASK: everything but trailing-edge RI (never 0xFF)
        sb(10, b"\x1e"),  # SET-LINESTATE-MASK: break, framing, parity, overrun
        sb(1, (19200).to_bytes(4, "big")),
        sb(2, b"\x08"), sb(3, b"\x01"), sb(4, b"\x02"),
        sb(5, b"\x03"), sb(5, b"\x10"),  # hardware flow control both ways
        sb(5, b"\x08"), sb(5, b"\x0c"),  # DTR on, RTS off
    ]

    async def scenario(script: ScriptedServer, listener: Listener, link: Link, server) -> None:
        link.apply_settings(settings)
        link.set_lines(Lines(dtr=True, rts=False))
        link.start()
        for attempt in range(2):
            await wait_for(lambda n=attempt: len(script.connections) > n, f"connection {attempt + 1}")
            sent = script.connections[attempt]
            await wait_for(lambda sent=sent: expected[-1] in sent, "the whole opening")
            positions = [sent.find(command) for command in expected]
            assert -1 not in positions, (attempt, bytes(sent))
            assert positions == sorted(positions), (attempt, bytes(sent))
            script.writers[attempt].close()  # the server drops us: the link must come back with all of it
        assert link.stats.reconnects >= 1

    asyncio.run(run_with_server(scenario))


def test_a_lent_socket_stays_lent_when_the_negotiation_timer_fires():
    """The negotiation timer fires once per connection, negotiated or not; it has nothing to send then, and
    must not take the socket back from an express relay (that put a busy port back on the loop for a
    round of wake-ups, a few seconds after every connect)."""

    async def scenario(kind: str) -> None:
        script = ScriptedServer()
        server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        listener = Listener()
        link = Link(parse_target(f"{kind}://127.0.0.1:{port}"), listener, name="test", negotiation_timeout=0.2)
        reclaimed: list[str] = []
        try:
            link.start()
            await asyncio.wait_for(listener.writable.wait(), 10)
            await wait_for(lambda: link.lend_socket(lambda: reclaimed.append("reclaimed")) is not None,
                           "the socket to be lendable")
            await asyncio.sleep(0.5)  # well past the negotiation timer
            assert reclaimed == [], kind
            link.set_lines(Lines(dtr=False, rts=True))  # something to send: now it must be taken back
            assert reclaimed == (["reclaimed"] if kind == "rfc2217" else []), kind
        finally:
            await link.stop()
            server.close()
            for writer in script.writers:
                writer.close()

    for kind in ("tcp", "rfc2217"):
        asyncio.run(scenario(kind))


def test_stop_ends_a_link_whose_retry_is_woken_in_the_same_turn():
    """retry_now() (a network interface came up) and stop() (the port is removed) in one turn of the loop:
    the back-off's wait completes just as the link's task is cancelled.  asyncio.wait_for returned normally
    then (Python before 3.12), the link went on reconnecting with nobody to stop it, and stop() never
    returned: `vcom remove` hung (seen in `make bench`, removing ports of servers that kept dropping)."""
    from peers import refusing_port

    async def scenario(port: int) -> None:
        link = Link(parse_target(f"127.0.0.1:{port}"), Listener(), name="test")
        link.start()
        try:
            await wait_for(lambda: link.status()["state"] == "backoff", "the first refused connect")
            for _ in range(3):  # three rounds: each must end
                link.retry_now()
                stopping = asyncio.ensure_future(link.stop())
                # asyncio.wait, which does not cancel what it waits for: a timeout here is the hang itself
                # (a cancel would end the link's task for real, and hide it).
                done, _ = await asyncio.wait({stopping}, timeout=5)
                assert done, "stop() did not return: the link's task ran on"
                assert link.status()["state"] == "idle"
                link.start()
                await wait_for(lambda: link.status()["state"] == "backoff", "the refused connect")
        finally:
            link.stop_nowait()

    with refusing_port() as port:
        asyncio.run(scenario(port))
