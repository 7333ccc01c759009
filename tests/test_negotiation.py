"""What goes on the wire at connect: the line settings before the first data byte,
and the bounded wait for a server that never negotiates.

The program writes at the very moment it opens the port, before vcom could
have connected; the wire is read from a recording proxy in front of ser2net,
and from a server that records what it receives but never says a word.
"""

from __future__ import annotations

import os
from pathlib import Path

from peers import (
    COM_PORT_OPTION,
    DO,
    SET_BAUDRATE,
    SET_CONTROL,
    SET_DATASIZE,
    SET_PARITY,
    SET_STOPSIZE,
    WILL,
    Data,
    HostileServer,
    Negotiation,
    PtyDevice,
    Ser2net,
    Subnegotiation,
    Vcom,
    WireProxy,
    decode_telnet,
    wait_until,
)

SETTINGS = (SET_BAUDRATE, SET_DATASIZE, SET_PARITY, SET_STOPSIZE)


def test_first_data_byte_follows_the_initial_settings(
    vcom: Vcom, ser2net: Ser2net, device: PtyDevice, start_peer, open_port, tmp_path: Path
):
    proxy = start_peer(WireProxy(tmp_path / "proxy", ser2net.port))
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{proxy.port}", "--baud", "19200")
    fd = open_port(port)
    os.write(fd, b"first bytes")  # before vcom has even connected
    assert device.read_exact(11) == b"first bytes"

    items = proxy.client_items(1)
    first_data = next(i for i, item in enumerate(items) if isinstance(item, Data))
    before = items[:first_data]
    # Every line setting, the speed the port was created with among them, left before any data.
    sent = {item.command: item for item in before if isinstance(item, Subnegotiation)
            and item.option == COM_PORT_OPTION}
    assert set(SETTINGS) <= set(sent), before
    assert sent[SET_BAUDRATE].number == 19200
    assert SET_CONTROL in sent  # flow control, part of the settings
    assert items[first_data].data.startswith(b"first bytes")
    # ...and the data only after the server agreed to COM-PORT-OPTION (the proxy logs both ways in order).
    agreed = first_record(proxy, "s2c", lambda items: Negotiation(DO, COM_PORT_OPTION) in items)
    data = first_record(proxy, "c2s", lambda items: any(isinstance(item, Data) for item in items))
    assert agreed < data


def first_record(proxy: WireProxy, direction: str, predicate) -> int:
    """The number of the proxy record at which the stream one way first satisfies ``predicate``."""
    stream = b""
    for number, record in enumerate(proxy.records()):
        if record["event"] == "data" and record["dir"] == direction and record["conn"] == 1:
            stream += bytes.fromhex(record["hex"])
            if predicate(decode_telnet(stream)):
                return number
    raise AssertionError(f"never seen {direction}")


def test_a_silent_server_gets_the_data_after_the_negotiation_cap(vcom: Vcom, start_peer, open_port,
                                                                 tmp_path: Path):
    server = start_peer(HostileServer(tmp_path / "silent", "silent"))
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{server.port}")
    fd = open_port(port)
    os.write(fd, b"anyone?")
    # vcom waits for an answer at most a few seconds, then carries plain data (deadline well past the cap).
    wait_until(lambda: b"anyone?" in server.received(), 15, "the data to reach the silent server")
    received = decode_telnet(server.received())
    # It asked (WILL COM-PORT-OPTION) but, never answered, sent no RFC 2217 command: nothing was agreed.
    assert Negotiation(WILL, COM_PORT_OPTION) in received
    assert not [item for item in received if isinstance(item, Subnegotiation)]
    assert [item for item in received if isinstance(item, Data)] == [Data(b"anyone?")]
    status = vcom.status(port)
    assert (status["state"], status["com_port"], status["connects"]) == ("connected", None, 1)
    assert server.connections() == 1
