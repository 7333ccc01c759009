"""Timing like a UART: flushes, drains and flow control mean on a vcom port what they mean locally.

The far ends are `vcom share sim:echo` (a loop-back plug that follows the
flow control in force) and, where the network's own delay matters, the same
plug behind a relay that holds the way back until vcom's purge passes, so
that what the plug echoed is still in flight when the program flushes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import termios
import textwrap
import tty

import pytest
from peers import (
    PURGE_DATA,
    PYTHON,
    SET_CONTROL,
    Vcom,
    WireProxy,
    bound_addresses,
    data_and_commands,
    wait_until,
)

# A relay on 127.0.0.1 that holds the way back (server to client), in order, from the moment a
# SET-BAUDRATE to 115200 passes on the way out (the previous program's tcsetattr, just before it writes)
# until a PURGE-DATA does (the fresh program's tcflush); before and after, both ways flow freely.  So
# what the plug echoed is still in flight when vcom purges, however long the fresh program takes to
# start and flush on a loaded machine.
PURGE_RELAY = textwrap.dedent("""
    import asyncio, sys
    target = int(sys.argv[1])
    HOLD = bytes([255, 250, 44, 1, 0, 1, 0xc2, 0])   # IAC SB COM-PORT-OPTION SET-BAUDRATE 115200
    RELEASE = bytes([255, 250, 44, 12])              # IAC SB COM-PORT-OPTION PURGE-DATA

    async def client(reader, writer):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        state, held = "passing", []

        async def out():
            nonlocal state
            seen = b""
            while chunk := await reader.read(65536):
                up_writer.write(chunk)
                seen = seen[-7:] + chunk
                if state == "passing" and HOLD in seen:
                    state, seen = "holding", b""
                elif state == "holding" and RELEASE in seen:
                    await up_writer.drain()  # the purge reaches the server before what it purges
                    state = "released"
                    for data in held:
                        writer.write(data)
            up_writer.close()

        async def back():
            while chunk := await up_reader.read(65536):
                if state == "holding":
                    held.append(chunk)
                else:
                    writer.write(chunk)
            writer.close()

        try:
            await asyncio.gather(out(), back())
        except ConnectionError:
            pass

    async def main():
        server = await asyncio.start_server(client, "127.0.0.1", 0)
        async with server:
            await server.serve_forever()

    asyncio.run(main())
""")


@pytest.fixture
def purge_held_echo(vcom: Vcom):
    """sim:echo behind a relay that holds what comes back from a change to 115200 baud until vcom sends
    PURGE-DATA: the relay's port."""
    echo = vcom.share("sim:echo")
    relay = subprocess.Popen([PYTHON, "-c", PURGE_RELAY, str(echo)])
    try:
        ((_, port),) = wait_until(lambda: bound_addresses(relay.pid), 15, "the relay listening")
        yield port
    finally:
        relay.kill()
        relay.wait(10)


FRESH_SESSION = """
    import json, os, select, termios, time, tty
    fd = os.open({port!r}, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    termios.tcflush(fd, termios.TCIFLUSH)   # pyserial's reset_input_buffer()
    os.write(fd, b"fresh")
    got, deadline = b"", time.monotonic() + 10
    while len(got) < 5 and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            got += os.read(fd, 100)
    # Whatever else comes now would be stale too.
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            got += os.read(fd, 100)
    print(json.dumps({{"read": got.decode(errors="replace")}}))
"""


@pytest.mark.parametrize("wrapped", [False, True])
def test_a_flush_after_a_reopen_keeps_out_what_was_echoed_before_it(vcom: Vcom, purge_held_echo, tmp_path, wrapped):
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{purge_held_echo}", "--connect", "always")
    vcom.wait_status(port, lambda s: s["state"] == "connected", what="connected")
    # The previous program writes and leaves; at 115200 baud the plug echoes all of it within 10 ms, and
    # the echo is on its way back, held by the relay.
    previous = os.open(port, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(previous, termios.TCSANOW)  # no flush: the fresh program's is the only PURGE-DATA
    settings = termios.tcgetattr(previous)
    settings[4] = settings[5] = termios.B115200
    termios.tcsetattr(previous, termios.TCSANOW, settings)
    os.write(previous, b"stale" * 20)
    os.close(previous)
    # The plug has echoed it (a later purge at the server would drop an echo not yet made: nothing would
    # come back to discard); the relay holds it until the fresh program's flush sends PURGE-DATA.
    wait_until(lambda: vcom.query()["shares"][0]["device_stats"]["bytes_out"] >= 100, 5, "the plug's echo")
    script = textwrap.dedent(FRESH_SESSION.format(port=str(port)))
    command = [PYTHON, "-m", "vcom", "wrap", PYTHON, "-c", script] if wrapped else [PYTHON, "-c", script]
    fresh = subprocess.run(command, env=vcom.env, capture_output=True, text=True, timeout=60)
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.strip().endswith('{"read": "fresh"}'), fresh.stdout
    status = vcom.status(port)
    # The stale echo reached vcom after the purge went out, and was discarded there and counted.
    counts = {k: status[k] for k in ("bytes_to_remote", "bytes_from_remote", "purged_bytes", "dropped_bytes")}
    assert status["purged_bytes"] >= 100, counts


def test_a_server_that_never_answers_purge_is_waited_for_once(vcom: Vcom, tmp_path):
    """A server that never answers PURGE-DATA costs one bounded wait (what arrives during it is discarded),
    and is not waited for again on that connection."""
    server = subprocess.Popen([PYTHON, "-c", textwrap.dedent("""
        import socket, sys
        IAC, SB, SE, WILL, DO = 255, 250, 240, 251, 253
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        print(s.getsockname()[1], flush=True)
        c, _ = s.accept()
        c.sendall(bytes([IAC, DO, 44, IAC, WILL, 44]))
        buffer = b""
        while chunk := c.recv(4096):
            # Echo the data, answer nothing (a PURGE-DATA, IAC SB 44 12 .. IAC SE, is swallowed).
            buffer += chunk
            out = bytearray()
            i = 0
            while i < len(buffer):
                if buffer[i] == IAC:
                    if i + 1 >= len(buffer):
                        break
                    if buffer[i + 1] == IAC:
                        out += bytes([IAC, IAC]); i += 2; continue
                    if buffer[i + 1] == SB:
                        end = buffer.find(bytes([IAC, SE]), i)
                        if end < 0:
                            break
                        i = end + 2; continue
                    i += 3 if buffer[i + 1] in (251, 252, 253, 254) else 2
                    continue
                out.append(buffer[i]); i += 1
            buffer = buffer[i:]
            c.sendall(bytes(out))
    """)], stdout=subprocess.PIPE, text=True)
    try:
        listen = int(server.stdout.readline())
        port = tmp_path / "ttyV0"
        vcom.add(port, f"127.0.0.1:{listen}", "--connect", "always")
        vcom.wait_status(port, lambda s: s["state"] == "connected", what="connected")
        for attempt in range(3):
            result = subprocess.run([PYTHON, "-c", textwrap.dedent(FRESH_SESSION.format(port=str(port)))],
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            if attempt == 0:  # the one wait: the echo of "fresh" may fall into it
                assert result.stdout.strip() in ('{"read": "fresh"}', '{"read": ""}'), result.stdout
                vcom.wait_for(lambda: "does not answer PURGE-DATA" in vcom.log_tail(200), 15, "the warning")
            else:
                assert result.stdout.strip() == '{"read": "fresh"}', (attempt, result.stdout)
        assert vcom.log_tail(200).count("does not answer PURGE-DATA") == 1
    finally:
        server.kill()
        server.wait(10)


def test_xoff_looped_back_stops_the_plug_and_a_write_timeout_fires(vcom: Vcom, tmp_path):
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{vcom.share('sim:echo')}")
    seen = vcom.wrap(f"""
        import json, time, serial
        s = serial.Serial({str(port)!r}, 115200, xonxoff=True, write_timeout=3)
        s.write(b"before")
        s.flush()
        time.sleep(0.5)
        echoed = s.read(s.in_waiting)
        s.write(b"\\x13")  # XOFF: looped back, the plug's transmitter stops
        s.flush()
        s.write(b"held" * 10)
        s.flush()
        s.timeout = 1
        after = s.read(40)  # held in the plug: nothing comes back
        try:
            for _ in range(100):
                s.write(bytes(65536))  # held: sooner or later every buffer on the way is full
            outcome = "written"
        except serial.SerialTimeoutException:
            outcome = "timed out"
        print(json.dumps({{"echoed": echoed.decode(), "after": after.decode(), "outcome": outcome}}))
    """, timeout=120)
    assert seen == {"echoed": "before", "after": "", "outcome": "timed out"}
    echo = vcom.status("sim:echo")
    assert echo["settings"]["flow_out"] == "xonxoff"
    assert echo["device_stats"]["tx_queued"] > 0  # held, not drained


@pytest.mark.parametrize("emulate", [False, True], ids=["network-paced", "emulate-baud"])
def test_rs485_style_rts_around_a_drained_write(vcom: Vcom, start_peer, tmp_path, emulate: bool):
    """RTS raised, data written, tcdrain, RTS lowered: on the wire, RTS up, every data byte, then RTS down.
    With --emulate-baud each drain also lasts the frame's line time, as on a local UART (320 bytes at 9600
    8N1: a third of a second; a lower bound)."""
    proxy = start_peer(WireProxy(tmp_path / "proxy", vcom.share("sim:echo")))
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{proxy.port}", *(["--emulate-baud"] if emulate else []))
    drains = vcom.wrap(f"""
        import json, time, serial
        s = serial.Serial({str(port)!r}, 9600, rtscts=False)
        drains = []
        for n in range(3):
            s.rts = True
            start = time.monotonic()
            s.write(b"frame %d;" % n * 40)
            s.flush()
            drains.append(time.monotonic() - start)
            s.rts = False
        print(json.dumps(drains))
    """)
    if emulate:
        assert all(d >= 320 / 960 * 0.99 for d in drains), drains

    def events() -> list[object]:
        out: list[object] = []
        for item in data_and_commands(proxy.client_items(), SET_CONTROL):
            if isinstance(item, bytes):
                out.append(item)
            elif item.value[:1] in (b"\x0b", b"\x0c"):
                out.append("RTS+" if item.value[:1] == b"\x0b" else "RTS-")
        return out

    def frames() -> list[object]:
        merged: list[object] = []
        for e in events():
            if isinstance(e, bytes) and merged and isinstance(merged[-1], bytes):
                merged[-1] += e
            else:
                merged.append(e)
        return merged

    wait_until(lambda: frames().count("RTS-") >= 3, 20, "three frames")
    seen = frames()
    start = seen.index("RTS+")
    assert seen[start:start + 9] == ["RTS+", b"frame 0;" * 40, "RTS-", "RTS+", b"frame 1;" * 40, "RTS-",
                                     "RTS+", b"frame 2;" * 40, "RTS-"], seen


def test_purge_reaches_the_wire_in_order(vcom: Vcom, start_peer, tmp_path):
    proxy = start_peer(WireProxy(tmp_path / "proxy", vcom.share("sim:echo")))
    port = tmp_path / "ttyV0"
    # Connected first: a flush with no connection has no remote buffer to purge (and sends no purge).
    vcom.add(port, f"127.0.0.1:{proxy.port}", "--connect", "always")
    vcom.wait_status(port, lambda s: s["state"] == "connected", what="connected")
    vcom.wrap(f"""
        import json, os, termios, tty
        fd = os.open({str(port)!r}, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(fd)
        os.write(fd, b"one")
        termios.tcflush(fd, termios.TCIFLUSH)
        os.write(fd, b"two")
        termios.tcdrain(fd)
        print(json.dumps({{}}))
    """)

    def wire() -> list[object]:
        return [item if isinstance(item, bytes) else ("purge", item.value[0])
                for item in data_and_commands(proxy.client_items(), PURGE_DATA)]

    wait_until(lambda: b"two" in [e for e in wire() if isinstance(e, bytes)], 15, "all on the wire")
    seen = wire()
    # (tty.setraw's TCSAFLUSH purges too, before "one".)
    one, two = seen.index(b"one"), seen.index(b"two")
    assert ("purge", 1) in seen[one:two], seen


def test_a_flush_before_the_connection_neither_waits_nor_loses_what_was_written(vcom: Vcom, tmp_path):
    """A receive flush while the server is unreachable returns at once (there is no remote buffer to
    purge); what the program wrote before and after it still goes out, in order, once the server is up."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))  # bound, not listening: every connect is refused for now
        port = tmp_path / "ttyV0"
        vcom.add(port, f"tcp://127.0.0.1:{server.getsockname()[1]}", "--connect", "always")
        vcom.wrap(f"""
            import json, os, termios, tty
            fd = os.open({str(port)!r}, os.O_RDWR | os.O_NOCTTY)
            tty.setraw(fd, termios.TCSANOW)
            os.write(fd, b"one")
            termios.tcflush(fd, termios.TCIFLUSH)
            os.write(fd, b"two")
            os.close(fd)
            print(json.dumps({{}}))
        """, timeout=20)
        server.listen()
        server.settimeout(30)  # the link's back-off after the refusals is at most 15 s
        peer, _ = server.accept()
        with peer:
            peer.settimeout(10)
            got = b""
            while len(got) < 6 and (chunk := peer.recv(64)):
                got += chunk
    assert got == b"onetwo"
