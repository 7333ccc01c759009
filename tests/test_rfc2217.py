"""Tests of the RFC 2217 codec: exact bytes, parsing, negotiation, robustness.

The codec has no I/O, so most tests feed it bytes and compare what comes
out.  The last part checks it against real peers: pyserial's own RFC 2217
server and client code, ser2net and sredird, each started by the test on
127.0.0.1 with a pseudo-terminal as the serial device.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import termios
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import serial
import serial.rfc2217 as pyserial_rfc2217
from hypothesis import given, settings
from hypothesis import strategies as st
from peers import PtyDevice, Ser2net, Socat

from vcom.rfc2217 import (
    BINARY,
    COM_PORT_OPTION,
    DO,
    DONT,
    ECHO,
    IAC,
    SB,
    SE,
    SGA,
    WILL,
    WONT,
    Command,
    ComPortOption,
    Connection,
    Control,
    Data,
    FlowControlResume,
    FlowControlSuspend,
    LimitExceeded,
    LineState,
    ModemState,
    NotifyLineState,
    NotifyModemState,
    OptionChange,
    ProtocolError,
    Purge,
    PurgeData,
    Role,
    SetBaudRate,
    SetControl,
    SetDataSize,
    SetLineStateMask,
    SetModemStateMask,
    SetParity,
    SetStopSize,
    Signature,
    break_control,
    changed_commands,
    dtr_control,
    flow_from_control,
    flow_in_control,
    flow_out_control,
    modem_signals,
    modem_state,
    parity_code,
    parity_from_code,
    rts_control,
    settings_commands,
    stop_code,
    stop_from_code,
)
from vcom.rfc2217 import connection as framing
from vcom.settings import FlowControl, LineSettings, Parity, Signals, StopBits

# The codec's data loops exist twice: in C (vcom/_speedups.c, built where a compiler and Python's headers
# were at install time) and in Python.  Every test of this module runs against each that is there.  The choice
# is made in vcom.rfc2217.connection, the module whose code calls them.
IMPLEMENTATIONS = ["python"] + (["c"] if framing._speedups is not None else [])


@pytest.fixture(scope="module", autouse=True, params=IMPLEMENTATIONS)
def implementation(request: pytest.FixtureRequest) -> Iterator[str]:
    saved = framing._escape, framing._undouble
    if request.param == "python":
        framing._escape, framing._undouble = framing._escape_python, None
    yield request.param
    framing._escape, framing._undouble = saved


EVENT_TYPES = (
    Data,
    Signature,
    SetBaudRate,
    SetDataSize,
    SetParity,
    SetStopSize,
    SetControl,
    NotifyLineState,
    NotifyModemState,
    FlowControlSuspend,
    FlowControlResume,
    SetLineStateMask,
    SetModemStateMask,
    PurgeData,
    ComPortOption,
    OptionChange,
    ProtocolError,
)


# -- helpers ------------------------------------------------------------------


def neg(verb: int, option: int) -> bytes:
    return bytes((IAC, verb, option))


def subneg(*payload: int) -> bytes:
    """IAC SB payload IAC SE with payload given unescaped."""
    body = bytes(payload).replace(b"\xff", b"\xff\xff")
    return bytes((IAC, SB)) + body + bytes((IAC, SE))


def merged(events: list) -> list:
    """Events with adjacent Data joined: how a split of the input may differ."""
    out: list = []
    for event in events:
        if isinstance(event, Data) and out and isinstance(out[-1], Data):
            out[-1] = Data(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def pump(a: Connection, b: Connection, rounds: int = 10) -> tuple[list, list]:
    """Carry each side's owed answers to the other until both are quiet."""
    events_a: list = []
    events_b: list = []
    for _ in range(rounds):
        to_b, to_a = a.data_to_send(), b.data_to_send()
        if not to_a and not to_b:
            return events_a, events_b
        events_b += b.receive_data(to_b)
        events_a += a.receive_data(to_a)
    raise AssertionError(f"negotiation did not settle in {rounds} rounds")


def negotiated_pair() -> tuple[Connection, Connection]:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    server.receive_data(client.initiate())
    client.receive_data(server.initiate())
    pump(client, server)
    return client, server


def binary_client() -> Connection:
    client = Connection(Role.CLIENT)
    client.initiate()
    client.receive_data(neg(WILL, BINARY) + neg(DO, BINARY) + neg(DO, COM_PORT_OPTION))
    assert client.binary_remote and client.com_port_enabled
    return client


# Recorded from ser2net 4.3.11 on connect: WILL SGA, DO SGA, WILL ECHO,
# DONT ECHO, DO BINARY, WILL BINARY, DO COM-PORT-OPTION.
SER2NET_GREETING = bytes.fromhex("fffb03fffd03fffb01fffe01fffd00fffb00fffd2c")
# Recorded from sredird 2.2.1: its 8-byte SET-BAUDRATE answer for 9600.
SREDIRD_BAUD_ANSWER = bytes.fromhex("fffa2c65" "00002580" "00000000" "fff0")


# -- constants ------------------------------------------------------------------


def test_codes_match_pyserial() -> None:
    p = pyserial_rfc2217
    assert [IAC, SB, SE, WILL, WONT, DO, DONT] == [
        b[0] for b in (p.IAC, p.SB, p.SE, p.WILL, p.WONT, p.DO, p.DONT)
    ]
    options = (p.BINARY, p.ECHO, p.SGA, p.COM_PORT_OPTION)
    assert [BINARY, ECHO, SGA, COM_PORT_OPTION] == [b[0] for b in options]
    for command in Command:
        if command is not Command.SIGNATURE:
            assert getattr(p, command.name)[0] == command
            assert p.RFC2217_ANSWER_MAP[bytes([command])][0] == command + 100
    pyserial_controls = [
        p.SET_CONTROL_REQ_FLOW_SETTING, p.SET_CONTROL_USE_NO_FLOW_CONTROL, p.SET_CONTROL_USE_SW_FLOW_CONTROL,
        p.SET_CONTROL_USE_HW_FLOW_CONTROL, p.SET_CONTROL_REQ_BREAK_STATE, p.SET_CONTROL_BREAK_ON,
        p.SET_CONTROL_BREAK_OFF, p.SET_CONTROL_REQ_DTR, p.SET_CONTROL_DTR_ON, p.SET_CONTROL_DTR_OFF,
        p.SET_CONTROL_REQ_RTS, p.SET_CONTROL_RTS_ON, p.SET_CONTROL_RTS_OFF, p.SET_CONTROL_REQ_FLOW_SETTING_IN,
        p.SET_CONTROL_USE_NO_FLOW_CONTROL_IN, p.SET_CONTROL_USE_SW_FLOW_CONTOL_IN,
        p.SET_CONTROL_USE_HW_FLOW_CONTOL_IN, p.SET_CONTROL_USE_DCD_FLOW_CONTROL,
        p.SET_CONTROL_USE_DTR_FLOW_CONTROL, p.SET_CONTROL_USE_DSR_FLOW_CONTROL,
    ]  # fmt: skip
    assert [c[0] for c in pyserial_controls] == [int(c) for c in Control] == list(range(20))
    assert [LineState.TIMEOUT, LineState.TSRE, LineState.THRE, LineState.BREAK, LineState.FRAMING_ERROR,
            LineState.PARITY_ERROR, LineState.OVERRUN, LineState.DATA_READY] == [
        p.LINESTATE_MASK_TIMEOUT, p.LINESTATE_MASK_SHIFTREG_EMPTY, p.LINESTATE_MASK_TRANSREG_EMPTY,
        p.LINESTATE_MASK_BREAK_DETECT, p.LINESTATE_MASK_FRAMING_ERROR, p.LINESTATE_MASK_PARTIY_ERROR,
        p.LINESTATE_MASK_OVERRUN_ERROR, p.LINESTATE_MASK_DATA_READY]  # fmt: skip
    assert [ModemState.CD, ModemState.RI, ModemState.DSR, ModemState.CTS, ModemState.DELTA_CD,
            ModemState.TRAILING_RI, ModemState.DELTA_DSR, ModemState.DELTA_CTS] == [
        p.MODEMSTATE_MASK_CD, p.MODEMSTATE_MASK_RI, p.MODEMSTATE_MASK_DSR, p.MODEMSTATE_MASK_CTS,
        p.MODEMSTATE_MASK_CD_CHANGE, p.MODEMSTATE_MASK_RI_CHANGE, p.MODEMSTATE_MASK_DSR_CHANGE,
        p.MODEMSTATE_MASK_CTS_CHANGE]  # fmt: skip
    assert [Purge.RECEIVE, Purge.TRANSMIT, Purge.BOTH] == [
        p.PURGE_RECEIVE_BUFFER[0], p.PURGE_TRANSMIT_BUFFER[0], p.PURGE_BOTH_BUFFERS[0]]  # fmt: skip


# -- exact bytes ------------------------------------------------------------------

# (command, the bytes after IAC SB 44 <code>, before IAC SE)
COMMAND_BYTES = [
    (Signature(""), Command.SIGNATURE, b""),
    (Signature("vcom 0.1"), Command.SIGNATURE, b"vcom 0.1"),
    (SetBaudRate(0), Command.SET_BAUDRATE, b"\x00\x00\x00\x00"),
    (SetBaudRate(9600), Command.SET_BAUDRATE, b"\x00\x00\x25\x80"),
    (SetBaudRate(115200), Command.SET_BAUDRATE, b"\x00\x01\xc2\x00"),
    (SetBaudRate(0x0001FFFF), Command.SET_BAUDRATE, b"\x00\x01\xff\xff\xff\xff"),
    (SetBaudRate(0xFFFFFFFF), Command.SET_BAUDRATE, b"\xff" * 8),
    (SetDataSize(0), Command.SET_DATASIZE, b"\x00"),
    (SetDataSize(7), Command.SET_DATASIZE, b"\x07"),
    (SetParity(3), Command.SET_PARITY, b"\x03"),
    (SetStopSize(3), Command.SET_STOPSIZE, b"\x03"),
    (SetControl(Control.DTR_ON), Command.SET_CONTROL, b"\x08"),
    (SetControl(Control.FLOW_DSR), Command.SET_CONTROL, b"\x13"),
    (SetControl(200), Command.SET_CONTROL, b"\xc8"),
    (NotifyLineState(LineState.BREAK | LineState.DATA_READY), Command.NOTIFY_LINESTATE, b"\x11"),
    (NotifyModemState(ModemState.CD | ModemState.DELTA_CD), Command.NOTIFY_MODEMSTATE, b"\x88"),
    (NotifyModemState(ModemState(0xFF)), Command.NOTIFY_MODEMSTATE, b"\xff\xff"),
    (FlowControlSuspend(), Command.FLOWCONTROL_SUSPEND, b""),
    (FlowControlResume(), Command.FLOWCONTROL_RESUME, b""),
    (SetLineStateMask(LineState(0xFF)), Command.SET_LINESTATE_MASK, b"\xff\xff"),
    (SetModemStateMask(ModemState(0xFF)), Command.SET_MODEMSTATE_MASK, b"\xff\xff"),
    (SetModemStateMask(ModemState(0)), Command.SET_MODEMSTATE_MASK, b"\x00"),
    (PurgeData(Purge.BOTH), Command.PURGE_DATA, b"\x03"),
]


@pytest.mark.parametrize(("command", "code", "value"), COMMAND_BYTES)
def test_command_bytes_and_parse_both_roles(command, code: int, value: bytes) -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    request = bytes((IAC, SB, COM_PORT_OPTION, code)) + value + bytes((IAC, SE))
    answer = bytes((IAC, SB, COM_PORT_OPTION, code + 100)) + value + bytes((IAC, SE))
    assert client.send(command) == request
    assert server.send(command) == answer
    assert server.receive_data(request) == [command]
    assert client.receive_data(answer) == [command]


def test_initiate_bytes_both_roles() -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    assert client.initiate() == (
        neg(WILL, BINARY) + neg(DO, BINARY) + neg(WILL, SGA) + neg(DO, SGA) + neg(WILL, COM_PORT_OPTION)
    )
    assert server.initiate() == (
        neg(DO, COM_PORT_OPTION) + neg(WILL, BINARY) + neg(DO, BINARY) + neg(WILL, SGA) + neg(DO, SGA)
    )
    # Asking twice would be a new request the peer must answer: never repeated.
    assert client.initiate() == b"" and server.initiate() == b""
    assert client.com_port_enabled is None and server.com_port_enabled is None


@pytest.mark.parametrize(
    "bad",
    [
        Data(b"x"),
        ComPortOption(True),
        OptionChange(BINARY, True, True),
        ProtocolError("x"),
        SetBaudRate(-1),
        SetBaudRate(1 << 32),
        SetDataSize(256),
        SetControl(-1),
        PurgeData(300),
    ],
)
def test_send_refuses_what_is_not_a_command_or_does_not_fit(bad) -> None:
    with pytest.raises(ValueError):
        Connection(Role.CLIENT).send(bad)


def test_send_data_doubles_iac() -> None:
    conn = Connection(Role.CLIENT)
    assert conn.send_data(b"a\xffb\xff\xff") == b"a\xff\xffb\xff\xff\xff\xff"
    # CR is not NUL-stuffed: serial servers pass every byte to the device.
    assert conn.send_data(b"\r\x00\r") == b"\r\x00\r"


def test_iac_in_received_data_and_values() -> None:
    client = binary_client()
    baud = subneg(COM_PORT_OPTION, 101, 0, 0x01, 0xFF, 0xFF)
    assert baud == b"\xff\xfa\x2c\x65\x00\x01\xff\xff\xff\xff\xff\xf0"
    events = client.receive_data(b"a\xff\xffb" + baud + b"\xff\xff")
    assert events == [Data(b"a\xffb"), SetBaudRate(0x0001FFFF), Data(b"\xff")]


# -- round trips (hypothesis) ---------------------------------------------------------

byte_values = st.integers(0, 255)
commands = st.one_of(
    st.builds(Signature, st.text(max_size=40)),
    st.builds(SetBaudRate, st.integers(0, 2**32 - 1)),
    st.builds(SetDataSize, byte_values),
    st.builds(SetParity, byte_values),
    st.builds(SetStopSize, byte_values),
    st.builds(SetControl, byte_values),
    st.builds(NotifyLineState, byte_values.map(LineState)),
    st.builds(NotifyModemState, byte_values.map(ModemState)),
    st.just(FlowControlSuspend()),
    st.just(FlowControlResume()),
    st.builds(SetLineStateMask, byte_values.map(LineState)),
    st.builds(SetModemStateMask, byte_values.map(ModemState)),
    st.builds(PurgeData, byte_values),
)


@settings(deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=12), commands), max_size=8), st.binary(max_size=12))
def test_round_trip_both_directions(items: list, tail: bytes) -> None:
    client, server = negotiated_pair()
    for sender, receiver in ((client, server), (server, client)):
        wire = b"".join(sender.send_data(data) + sender.send(command) for data, command in items)
        wire += sender.send_data(tail)
        sent = [event for data, command in items for event in (Data(data), command)] + [Data(tail)]
        expected = merged([event for event in sent if event != Data(b"")])
        events = receiver.receive_data(wire)
        assert events == expected
        assert receiver.data_to_send() == b""
        for event in events:
            if isinstance(event, SetControl):
                assert isinstance(event.value, Control) == (event.value < 20)
            if isinstance(event, PurgeData):
                assert isinstance(event.purge, Purge) == (1 <= event.purge <= 3)


# -- split invariance ----------------------------------------------------------------

pieces = st.one_of(
    st.binary(max_size=16),
    commands.map(lambda command: Connection(Role.SERVER).send(command)),
    commands.map(lambda command: Connection(Role.CLIENT).send(command)),
    st.builds(neg, st.sampled_from([WILL, WONT, DO, DONT]), st.sampled_from([BINARY, ECHO, SGA, 24, 44])),
    st.sampled_from(
        [b"\r\x00", b"\r", b"\x00", b"\r\n", b"\xff", b"\xff\xff", b"\xff\xf1", b"\xff\xf0", b"\xff\xfa",
         b"\xff\xc8", b"\xff\xfa\xff\xf0", b"\xff\xfa\x2c", b"\xff\xfa\x18\x01\xff\xf0"]
    ),  # fmt: skip
)


@st.composite
def split_streams(draw) -> tuple[bytes, list[int]]:
    stream = b"".join(draw(st.lists(pieces, max_size=12)))
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    return stream, cuts


def run(role: Role, chunks: list[bytes], *, binary: bool, max_subnegotiation: int = 1024) -> tuple:
    conn = Connection(role, max_subnegotiation=max_subnegotiation)
    conn.initiate()
    if binary:
        conn.receive_data(neg(WILL, BINARY))
    events: list = []
    answers = b""
    for chunk in chunks:
        events += conn.receive_data(chunk)
        answers += conn.data_to_send()
    state = (conn.com_port_enabled, conn.binary_local, conn.binary_remote)
    return merged(events), answers, state


def pieces_at(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@settings(deadline=None, max_examples=300)
@given(split_streams(), st.sampled_from(list(Role)), st.booleans(), st.sampled_from([8, 1024]))
def test_any_split_gives_the_same_events(split, role: Role, binary: bool, limit: int) -> None:
    stream, cuts = split
    whole = run(role, [stream], binary=binary, max_subnegotiation=limit)
    assert run(role, pieces_at(stream, cuts), binary=binary, max_subnegotiation=limit) == whole


# -- bulk 0xFF data (firmware images are mostly 0xFF) ------------------------------------

# Data heavy in 0xFF: single bytes, runs of odd and even length, and the bytes NVT treats specially.
ff_heavy = st.lists(st.sampled_from([b"\xff", b"\xff" * 2, b"\xff" * 7, b"\xff" * 64, b"\x00", b"\r", b"a"]),
                    max_size=24).map(b"".join)


@settings(deadline=None)
@given(st.lists(st.one_of(ff_heavy, st.binary(max_size=40)), max_size=8).map(b"".join))
def test_send_data_doubles_every_iac_of_ff_heavy_data(data: bytes) -> None:
    for role in Role:
        wire = Connection(role).send_data(data)
        assert wire == data.replace(b"\xff", b"\xff\xff")


def test_a_value_of_four_0xff_is_sent_doubled() -> None:
    assert Connection(Role.CLIENT).send(SetBaudRate(0xFFFFFFFF)) == bytes((IAC, SB, 44, 1)) + b"\xff" * 8 + bytes(
        (IAC, SE))


@settings(deadline=None, max_examples=300)
@given(st.lists(st.tuples(ff_heavy, commands), max_size=5), ff_heavy, st.lists(st.integers(0, 4000), max_size=8))
def test_ff_heavy_data_with_commands_survives_any_split(items: list, tail: bytes, cuts: list[int]) -> None:
    client, server = negotiated_pair()
    for sender, receiver in ((client, server), (server, client)):
        wire = b"".join(sender.send_data(data) + sender.send(command) for data, command in items)
        wire += sender.send_data(tail)
        sent = [event for data, command in items for event in (Data(data), command)] + [Data(tail)]
        expected = merged([event for event in sent if event != Data(b"")])
        events: list = []
        for chunk in pieces_at(wire, sorted(c for c in cuts if c <= len(wire))):
            events += receiver.receive_data(chunk)
        assert merged(events) == expected


@settings(deadline=None, max_examples=300)
@given(st.lists(st.one_of(ff_heavy, pieces), max_size=10), st.lists(st.integers(0, 4000), max_size=6),
       st.sampled_from(list(Role)), st.booleans())
def test_ff_heavy_streams_give_the_same_events_split_anywhere(parts: list, cuts: list[int], role: Role,
                                                             binary: bool) -> None:
    stream = b"".join(parts)
    whole = run(role, [stream], binary=binary)
    assert run(role, pieces_at(stream, sorted(c for c in cuts if c <= len(stream))), binary=binary) == whole


@pytest.mark.parametrize("length", range(1, 10))
def test_runs_of_iac_of_every_length_split_at_every_byte(length: int) -> None:
    """A run of IACs is data pairs, and when it is odd its last IAC starts a command."""
    stream = b"a" + b"\xff" * length + bytes((WILL, SGA)) + b"b" + b"\xff" * (2 * length) + b"c"
    if length % 2:
        expected = [Data(b"a" + b"\xff" * (length // 2)), OptionChange(SGA, local=False, enabled=True),
                    Data(b"b" + b"\xff" * length + b"c")]
    else:  # all pairs: the WILL SGA bytes are data
        expected = [Data(b"a" + b"\xff" * (length // 2) + bytes((WILL, SGA)) + b"b" + b"\xff" * length + b"c")]
    whole = run(Role.CLIENT, [stream], binary=True)
    assert whole[0] == expected
    for cut in range(len(stream) + 1):
        assert run(Role.CLIENT, pieces_at(stream, [cut]), binary=True) == whole, cut
    assert run(Role.CLIENT, [bytes([b]) for b in stream], binary=True) == whole


def test_a_firmware_image_of_0xff_comes_through_whole() -> None:
    image = bytearray(b"\xff" * (1 << 20))
    image[::4099] = b"\x00" * len(image[::4099])  # a few other bytes, as in a real image
    image = bytes(image)
    sender, receiver = negotiated_pair()
    wire = sender.send_data(image[:300_001]) + sender.send(NotifyModemState(ModemState.CTS)) \
        + sender.send_data(image[300_001:])
    assert wire.count(b"\xff") == 2 * image.count(b"\xff") + 2
    assert receiver.receive_data(wire) == [Data(image[:300_001]), NotifyModemState(ModemState.CTS),
                                           Data(image[300_001:])]
    events: list = []
    for at in range(0, len(wire), 4097):  # odd-sized reads split pairs of IACs
        events += receiver.receive_data(wire[at:at + 4097])
    assert merged(events) == [Data(image[:300_001]), NotifyModemState(ModemState.CTS), Data(image[300_001:])]


def undoubled(data: bytes) -> bytes | None:
    """Reference: IAC IAC pairs taken from the left made one 0xFF; None if an IAC is left alone."""
    out, at = bytearray(), 0
    while at < len(data):
        if data[at] != IAC:
            out.append(data[at])
            at += 1
        elif data[at + 1:at + 2] == b"\xff":
            out.append(IAC)
            at += 2
        else:
            return None
    return bytes(out)


@given(st.lists(st.sampled_from([b"\xff", b"\xff\xff", b"\xff" * 5, b"a", b"\r", b"\x00"]), max_size=30)
       .map(b"".join))
def test_a_read_of_doubled_iacs_is_its_data_in_one_event(data: bytes) -> None:
    plain = undoubled(data)
    if framing._undouble is not None:
        assert framing._undouble(data) == plain
    assert framing._escape(data) == data.replace(b"\xff", b"\xff\xff")
    if plain:
        assert binary_client().receive_data(data) == [Data(plain)]


def test_a_read_without_iac_is_one_event_and_no_copy() -> None:
    client = binary_client()
    chunk = bytes(range(255)) * 100
    events = client.receive_data(chunk)
    assert events == [Data(chunk)] and events[0].data is chunk
    reused = bytearray(b"abc")
    (event,) = client.receive_data(reused)
    reused[:] = b"xyz"
    assert event == Data(b"abc")  # a caller's buffer is copied, never aliased


TRANSCRIPT = (
    b"x\r\x00y\r\n\r"
    + SER2NET_GREETING
    + b"\x00z"  # the NUL after a CR that came before the greeting's WILL BINARY
    + subneg(COM_PORT_OPTION, 107, 0x30)
    + SREDIRD_BAUD_ANSWER
    + b"\xff\xff\r\x00"
    + subneg(COM_PORT_OPTION, 100, *b"name\xff")
    + b"\xff\xf1\xff\xc8"
    + neg(WILL, 24)
    + subneg(24, 1)
    + b"\xff\xfa\x2c\x65\x00\xff\xfb\x00"  # unterminated SB cut short by a command
    + subneg()
    + subneg(COM_PORT_OPTION, 5)
    + subneg(COM_PORT_OPTION, 113, 1)
    + b"\xff\xf0end"
)


@pytest.mark.parametrize("role", list(Role))
def test_transcript_split_at_every_byte_boundary(role: Role) -> None:
    whole = run(role, [TRANSCRIPT], binary=False, max_subnegotiation=12)
    assert any(isinstance(e, ProtocolError) for e in whole[0]) and any(isinstance(e, Data) for e in whole[0])
    assert run(role, [bytes([b]) for b in TRANSCRIPT], binary=False, max_subnegotiation=12) == whole
    for cut in range(len(TRANSCRIPT) + 1):
        assert run(role, pieces_at(TRANSCRIPT, [cut]), binary=False, max_subnegotiation=12) == whole, cut


def test_transcript_events_client() -> None:
    events, answers, state = run(Role.CLIENT, [TRANSCRIPT], binary=False, max_subnegotiation=12)
    assert answers == neg(DONT, ECHO) + neg(DONT, 24)
    assert state == (True, True, True)
    assert events == [
        Data(b"x\ry\r\n\r"),
        OptionChange(SGA, False, True),
        OptionChange(SGA, True, True),
        OptionChange(BINARY, True, True),
        OptionChange(BINARY, False, True),
        ComPortOption(True),
        Data(b"\x00z"),  # binary by now: the NUL is data
        NotifyModemState(ModemState(0x30)),
        SetBaudRate(9600),
        Data(b"\xff\r\x00"),
        Signature("name\ufffd"),
        ProtocolError("unknown telnet command IAC 200"),
        ProtocolError("IAC 251 inside a subnegotiation; subnegotiation skipped"),
        ProtocolError("empty subnegotiation"),
        ProtocolError("client command code 5 received from a server"),
        ProtocolError("unknown COM-PORT-OPTION command 113"),
        ProtocolError("IAC SE outside a subnegotiation"),
        Data(b"end"),
    ]


# -- option negotiation ----------------------------------------------------------------


def test_client_against_ser2net_greeting() -> None:
    client = Connection(Role.CLIENT)
    client.initiate()
    events = client.receive_data(SER2NET_GREETING)
    assert ComPortOption(True) in events
    assert client.data_to_send() == neg(DONT, ECHO)  # the only thing not already asked
    assert (client.com_port_enabled, client.binary_local, client.binary_remote) == (True, True, True)
    assert client.receive_data(SER2NET_GREETING) == []  # repeated: nothing changes, nothing answered
    assert client.data_to_send() == b""


def test_client_ignores_what_the_peer_says_about_its_own_com_port_side() -> None:
    # ser2net answers a DO 44 with WONT 44; only the server's DO matters.
    client = Connection(Role.CLIENT)
    client.initiate()
    assert client.receive_data(neg(WONT, COM_PORT_OPTION)) == []
    assert client.com_port_enabled is None and client.data_to_send() == b""
    assert client.receive_data(neg(DO, COM_PORT_OPTION)) == [ComPortOption(True)]
    assert client.data_to_send() == b""


def test_server_tolerates_wont_com_port() -> None:
    server = Connection(Role.SERVER)
    server.initiate()
    assert server.receive_data(neg(WONT, COM_PORT_OPTION)) == [ComPortOption(False)]
    assert server.com_port_enabled is False and server.data_to_send() == b""
    assert server.receive_data(neg(WONT, COM_PORT_OPTION)) == []
    # A client that changes its mind is welcome.
    assert server.receive_data(neg(WILL, COM_PORT_OPTION)) == [ComPortOption(True)]
    assert server.data_to_send() == neg(DO, COM_PORT_OPTION)


def test_commands_while_com_port_request_is_pending_mean_agreement() -> None:
    # pyserial's client can leave the server's DO 44 unanswered (it takes it as
    # the answer to its own WILL 44, not yet sent) and go straight to commands.
    server = Connection(Role.SERVER)
    server.initiate()
    request = Connection(Role.CLIENT).send(SetBaudRate(19200))
    assert server.receive_data(request * 2) == [ComPortOption(True), SetBaudRate(19200), SetBaudRate(19200)]
    assert server.com_port_enabled is True and server.data_to_send() == b""
    # A refusal stands: commands are still decoded, the option stays off.
    refused = Connection(Role.CLIENT)
    refused.initiate()
    refused.receive_data(neg(DONT, COM_PORT_OPTION))
    answer = Connection(Role.SERVER).send(SetBaudRate(9600))
    assert refused.receive_data(answer) == [SetBaudRate(9600)] and refused.com_port_enabled is False


def test_client_refused_com_port_once() -> None:
    client = Connection(Role.CLIENT)
    client.initiate()
    assert client.receive_data(neg(DONT, COM_PORT_OPTION)) == [ComPortOption(False)]
    assert client.receive_data(neg(DONT, COM_PORT_OPTION) * 3) == []
    assert client.com_port_enabled is False and client.data_to_send() == b""


def test_com_port_disabled_after_agreement_is_acknowledged() -> None:
    client = binary_client()
    assert client.receive_data(neg(DONT, COM_PORT_OPTION)) == [ComPortOption(False)]
    assert client.data_to_send() == neg(WONT, COM_PORT_OPTION)  # RFC 854: acknowledge a disable
    assert client.receive_data(neg(DONT, COM_PORT_OPTION)) == []
    assert client.data_to_send() == b""


def test_repeated_requests_answered_once() -> None:
    server = Connection(Role.SERVER)  # not initiated: the peer asks first
    assert server.receive_data(neg(WILL, BINARY) * 2 + neg(DO, SGA) * 2) == [
        OptionChange(BINARY, False, True),
        OptionChange(SGA, True, True),
    ]
    assert server.data_to_send() == neg(DO, BINARY) + neg(WILL, SGA)
    assert server.initiate() == neg(DO, COM_PORT_OPTION) + neg(WILL, BINARY) + neg(DO, SGA)
    server.receive_data(neg(WILL, COM_PORT_OPTION) * 2)
    assert server.data_to_send() == b""  # the first was the answer to our DO


def test_unknown_options_refused_once() -> None:
    client = Connection(Role.CLIENT)
    assert client.receive_data(neg(WILL, ECHO) * 2 + neg(DO, 31) * 2 + neg(WILL, 24) + neg(DO, ECHO)) == []
    assert client.data_to_send() == neg(DONT, ECHO) + neg(WONT, 31) + neg(DONT, 24) + neg(WONT, ECHO)
    assert client.receive_data(neg(WILL, 24) + neg(DO, 31)) == []
    assert client.data_to_send() == b""
    # The client does not let the server perform COM-PORT-OPTION (pyserial's server offers it).
    client.receive_data(neg(WILL, COM_PORT_OPTION))
    assert client.data_to_send() == neg(DONT, COM_PORT_OPTION) and client.com_port_enabled is None


def test_answers_to_things_never_asked_are_ignored() -> None:
    for role in Role:
        conn = Connection(role)
        stray = neg(WONT, SGA) + neg(DONT, BINARY) + neg(WONT, 99) + neg(DONT, 99)
        assert conn.receive_data(stray) == []
        assert conn.data_to_send() == b""


def test_two_codecs_settle_without_loops() -> None:
    client, server = negotiated_pair()
    assert (client.com_port_enabled, client.binary_local, client.binary_remote) == (True, True, True)
    assert (server.com_port_enabled, server.binary_local, server.binary_remote) == (True, True, True)
    assert client.option_enabled(SGA, local=True) and server.option_enabled(SGA, local=False)
    # The server hears WONT BINARY: it acknowledges, and so does the client.
    server.receive_data(neg(WONT, BINARY))
    assert server.data_to_send() == neg(DONT, BINARY)
    client.receive_data(neg(DONT, BINARY))
    assert client.data_to_send() == neg(WONT, BINARY)
    assert server.receive_data(neg(WONT, BINARY)) == [] and server.data_to_send() == b""
    assert not client.binary_local and not server.binary_remote and client.binary_remote
    # The client hears DO BINARY again: both ends turn it back on, once.
    assert client.receive_data(neg(DO, BINARY)) == [OptionChange(BINARY, True, True)]
    assert client.data_to_send() == neg(WILL, BINARY)
    assert server.receive_data(neg(WILL, BINARY)) == [OptionChange(BINARY, False, True)]
    assert server.data_to_send() == neg(DO, BINARY)
    assert client.receive_data(neg(DO, BINARY)) == [] and client.data_to_send() == b""
    assert client.binary_local and server.binary_remote


@settings(deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from([WILL, WONT, DO, DONT]),
                          st.sampled_from([BINARY, ECHO, SGA, 24, 44])), max_size=10))  # fmt: skip
def test_stray_requests_between_two_codecs_settle_in_agreement(requests: list) -> None:
    client, server = negotiated_pair()
    for to_client, verb, option in requests:
        # A request neither codec produced arrives at one of them; the
        # answers must settle (pump raises if they never do) ...
        (client if to_client else server).receive_data(neg(verb, option))
        pump(client, server)
        # ... with both ends agreeing on who performs what.
        for o in (BINARY, ECHO, SGA, 24, COM_PORT_OPTION):
            assert client.option_enabled(o, local=True) == server.option_enabled(o, local=False), o
            assert client.option_enabled(o, local=False) == server.option_enabled(o, local=True), o
        assert client.com_port_enabled == server.com_port_enabled


# -- NVT carriage return (RFC 854) ----------------------------------------------------


def test_cr_nul_is_cr_until_peer_sends_binary() -> None:
    client = Connection(Role.CLIENT)
    client.initiate()
    client.receive_data(neg(DO, BINARY))  # we send binary, the peer does not yet
    assert client.receive_data(b"a\r\x00b\r\nc\r\x00\x00") == [Data(b"a\rb\r\nc\r\x00")]
    assert client.receive_data(b"\r") == [Data(b"\r")]
    assert client.receive_data(b"\x00d") == [Data(b"d")]
    client.receive_data(neg(WILL, BINARY))
    assert client.receive_data(b"a\r\x00b\r") == [Data(b"a\r\x00b\r")]
    assert client.receive_data(b"\x00") == [Data(b"\x00")]


# -- server quirks and malformed input ---------------------------------------------


def test_sredird_eight_byte_baud_answer() -> None:
    assert binary_client().receive_data(SREDIRD_BAUD_ANSWER) == [SetBaudRate(9600)]


def test_short_baud_is_an_error_and_parsing_goes_on() -> None:
    events = binary_client().receive_data(subneg(COM_PORT_OPTION, 101, 0x25) + b"ok")
    assert events == [ProtocolError("SET-BAUDRATE value of 1 bytes, expected 4"), Data(b"ok")]


def test_values_are_taken_as_answered() -> None:
    # The server's answer is the value in force, whatever was asked.
    client = binary_client()
    wrong = subneg(COM_PORT_OPTION, 105, Control.FLOW_NONE) + subneg(COM_PORT_OPTION, 105, Control.BREAK_ON)
    assert client.receive_data(wrong) == [SetControl(Control.FLOW_NONE), SetControl(Control.BREAK_ON)]
    # ser2net answers SET-*-MASK with NOTIFY; several arrive in one read.
    burst = subneg(44, 106, 0) + subneg(44, 107, 0xFF) + subneg(44, 107, 0x0F)
    assert client.receive_data(burst) == [
        NotifyLineState(LineState(0)),
        NotifyModemState(ModemState(0xFF)),
        NotifyModemState(
            ModemState.DELTA_CD | ModemState.TRAILING_RI | ModemState.DELTA_DSR | ModemState.DELTA_CTS
        ),
    ]


def test_wrong_direction_codes_are_errors() -> None:
    client, server = negotiated_pair()
    assert client.receive_data(subneg(COM_PORT_OPTION, 1, 0, 0, 0x25, 0x80) + b"x") == [
        ProtocolError("client command code 1 received from a server"),
        Data(b"x"),
    ]
    assert server.receive_data(subneg(COM_PORT_OPTION, 101, 0, 0, 0x25, 0x80)) == [
        ProtocolError("server answer code 101 received from a client")
    ]
    for code in (13, 99):
        assert server.receive_data(subneg(COM_PORT_OPTION, code)) == [
            ProtocolError(f"unknown COM-PORT-OPTION command {code}")
        ]
    for code in (113, 255):
        assert client.receive_data(subneg(COM_PORT_OPTION, code)) == [
            ProtocolError(f"unknown COM-PORT-OPTION command {code}")
        ]


def test_empty_and_foreign_subnegotiations() -> None:
    client = binary_client()
    assert client.receive_data(subneg() + subneg(COM_PORT_OPTION)) == [
        ProtocolError("empty subnegotiation"),
        ProtocolError("COM-PORT-OPTION subnegotiation without a command"),
    ]
    assert client.receive_data(b"a" + subneg(24, 1, 0xFF) + subneg(31, 0, 80, 0, 24) + b"b") == [Data(b"ab")]
    assert client.receive_data(subneg(44, 102)) == [ProtocolError("SET-DATASIZE without a value")]


def test_empty_notify_is_a_poll_for_state_zero() -> None:
    # pyserial's client polls the modem state with an empty NOTIFY-MODEMSTATE.
    events = Connection(Role.SERVER).receive_data(subneg(COM_PORT_OPTION, 7))
    assert events == [NotifyModemState(ModemState(0))]


def test_longer_values_use_their_first_bytes() -> None:
    client = binary_client()
    assert client.receive_data(subneg(COM_PORT_OPTION, 102, 7, 7)) == [SetDataSize(7)]


def test_legal_telnet_commands_are_ignored_and_others_reported() -> None:
    client = binary_client()
    legal = b"".join(bytes((IAC, command)) for command in range(241, 250))
    assert client.receive_data(b"a" + legal + b"b") == [Data(b"ab")]
    assert client.receive_data(b"\xff\x00\xff\xf0") == [
        ProtocolError("unknown telnet command IAC 0"),
        ProtocolError("IAC SE outside a subnegotiation"),
    ]


def test_oversized_subnegotiation_is_skipped_once() -> None:
    client = Connection(Role.CLIENT, max_subnegotiation=16)
    client.initiate()
    client.receive_data(neg(WILL, BINARY) + neg(DO, COM_PORT_OPTION))
    fits = subneg(COM_PORT_OPTION, 100, *b"x" * 14)
    assert client.receive_data(fits) == [Signature("x" * 14)]
    too_long = subneg(COM_PORT_OPTION, 100, *b"y\xff" * 200)
    after = subneg(COM_PORT_OPTION, 101, 0, 0, 0x4B, 0) + b"z"
    assert client.receive_data(too_long + after) == [
        ProtocolError("subnegotiation longer than 16 bytes skipped"),
        SetBaudRate(19200),
        Data(b"z"),
    ]


def test_an_endless_subnegotiation_is_reported_once() -> None:
    client = Connection(Role.CLIENT, max_subnegotiation=16, endless_subnegotiation=100)
    client.initiate()
    assert client.receive_data(bytes([IAC, SB, COM_PORT_OPTION, 100]) + b"y" * 50) == [
        ProtocolError("subnegotiation longer than 16 bytes skipped")]
    assert client.receive_data(b"y" * 60) == [LimitExceeded("subnegotiation", "subnegotiation longer than 100 bytes")]
    assert client.receive_data(b"y" * 1000) == []  # still skipped, reported once
    assert client.receive_data(bytes([IAC, SE]) + b"z") == [Data(b"z")]  # and the stream is in step again


def test_a_command_flood_is_reported_once_per_count_and_the_count_restarts() -> None:
    client = Connection(Role.CLIENT, command_limit=100)
    client.initiate()
    flood = (neg(DO, BINARY) + neg(WILL, BINARY)) * 60  # repeats change nothing: no answer, no event
    events = client.receive_data(b"a\xff\xffb" + flood)  # a doubled IAC is data, not a command
    assert events == [Data(b"a\xffb"), OptionChange(BINARY, True, True), OptionChange(BINARY, False, True),
                      LimitExceeded("commands", "100 telnet commands")]
    assert client.commands_received == 120
    assert client.receive_data(flood) == []  # reported once until the caller starts a new count
    client.restart_command_count()
    assert client.receive_data(flood)[-1] == LimitExceeded("commands", "100 telnet commands")


def test_unterminated_subnegotiation_recovers_at_the_next_command() -> None:
    client = Connection(Role.CLIENT)
    client.initiate()
    unterminated = b"\xff\xfa\x2c\x64ab" + neg(WILL, BINARY) + b"\xff\xfa\x2c\x64cd"
    restarted = b"\xff\xfa\x2c\x65" + bytes(4) + b"\xff\xf0"
    events = client.receive_data(unterminated + restarted)
    assert events == [
        ProtocolError("IAC 251 inside a subnegotiation; subnegotiation skipped"),
        OptionChange(BINARY, False, True),
        ProtocolError("IAC 250 inside a subnegotiation; subnegotiation skipped"),
        ComPortOption(True),  # the first complete COM-PORT subnegotiation
        SetBaudRate(0),
    ]


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=300), st.sampled_from(list(Role)), st.sampled_from([8, 64, 1024]))
def test_garbage_never_raises_and_parsing_recovers(garbage: bytes, role: Role, limit: int) -> None:
    conn = Connection(role, max_subnegotiation=limit)
    conn.initiate()
    events = conn.receive_data(garbage)
    assert all(isinstance(event, EVENT_TYPES) for event in events)
    assert len(conn.data_to_send()) <= 3 * len(garbage)
    # IAC SE twice leaves every parser state: the next command is read cleanly.
    conn.receive_data(b"\xff\xf0\xff\xf0")
    peer = Connection(Role.SERVER if role is Role.CLIENT else Role.CLIENT)
    events = conn.receive_data(peer.send(SetBaudRate(0xFFFFFFFF)))
    assert events[-1] == SetBaudRate(0xFFFFFFFF)
    assert all(isinstance(event, ComPortOption) for event in events[:-1])


# -- settings conversions ----------------------------------------------------------


def test_parity_and_stop_codes() -> None:
    assert [parity_code(p) for p in Parity] == [1, 2, 3, 4, 5]
    assert [stop_code(s) for s in StopBits] == [1, 3, 2]  # ONE, ONE_POINT_FIVE, TWO
    for parity in Parity:
        assert parity_from_code(parity_code(parity)) is parity
        # The same numbers as pyserial's map.
        assert pyserial_rfc2217.RFC2217_PARITY_MAP[parity.value[0].upper()] == parity_code(parity)
    for stop in StopBits:
        assert stop_from_code(stop_code(stop)) is stop
        assert pyserial_rfc2217.RFC2217_STOPBIT_MAP[float(stop.value)] == stop_code(stop)
    assert parity_from_code(0) is None and parity_from_code(6) is None
    assert stop_from_code(0) is None and stop_from_code(4) is None


def test_flow_controls() -> None:
    assert [flow_out_control(f) for f in FlowControl] == [
        Control.FLOW_NONE,
        Control.FLOW_XONXOFF,
        Control.FLOW_HARDWARE,
    ]
    assert [flow_in_control(f) for f in FlowControl] == [
        Control.INBOUND_FLOW_NONE,
        Control.INBOUND_FLOW_XONXOFF,
        Control.INBOUND_FLOW_HARDWARE,
    ]
    decoded = {value: flow_from_control(value) for value in range(256) if flow_from_control(value)}
    assert decoded == {
        1: ("out", FlowControl.NONE),
        2: ("out", FlowControl.XONXOFF),
        3: ("out", FlowControl.RTSCTS),
        14: ("in", FlowControl.NONE),
        15: ("in", FlowControl.XONXOFF),
        16: ("in", FlowControl.RTSCTS),
    }


def test_settings_commands_in_rfc_order() -> None:
    line = LineSettings(baud=57600, data_bits=7, parity=Parity.EVEN, stop_bits=StopBits.TWO,
                        flow_out=FlowControl.RTSCTS, flow_in=FlowControl.XONXOFF)  # fmt: skip
    assert settings_commands(line) == [
        SetBaudRate(57600),
        SetDataSize(7),
        SetParity(3),
        SetStopSize(2),
        SetControl(Control.FLOW_HARDWARE),
        SetControl(Control.INBOUND_FLOW_XONXOFF),
    ]


def test_changed_commands_are_those_of_the_settings_that_changed_in_rfc_order() -> None:
    before = LineSettings(baud=9600)
    after = replace(before, baud=19200, parity=Parity.ODD, flow_in=FlowControl.RTSCTS)
    assert changed_commands(before, after) == [SetBaudRate(19200), SetParity(2),
                                               SetControl(Control.INBOUND_FLOW_HARDWARE)]
    assert changed_commands(after, after) == []
    assert changed_commands(None, after) == settings_commands(after)  # nothing sent yet: all of them


def test_signal_helpers() -> None:
    assert (dtr_control(True), dtr_control(False)) == (Control.DTR_ON, Control.DTR_OFF)
    assert (rts_control(True), rts_control(False)) == (Control.RTS_ON, Control.RTS_OFF)
    assert (break_control(True), break_control(False)) == (Control.BREAK_ON, Control.BREAK_OFF)
    base = Signals(dtr=True, rts=False)
    assert modem_signals(ModemState.CTS | ModemState.CD | ModemState.DELTA_DSR, base) == Signals(
        dtr=True, rts=False, cts=True, dsr=False, dcd=True, ri=False
    )
    assert modem_state(Signals(cts=True, ri=True, dsr=None)) == ModemState.CTS | ModemState.RI


# -- pyserial's implementation -------------------------------------------------------


class _Collect:
    """The connection object pyserial's PortManager writes to."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def write(self, data: bytes) -> None:
        self.buffer += data

    def take(self) -> bytes:
        out = bytes(self.buffer)
        self.buffer.clear()
        return out


def test_client_against_pyserial_port_manager() -> None:
    device = serial.serial_for_url("loop://", timeout=0)
    wire = _Collect()
    manager = pyserial_rfc2217.PortManager(device, wire)
    client = Connection(Role.CLIENT)

    def exchange(outgoing: bytes) -> tuple[list, bytes]:
        received = b"".join(manager.filter(outgoing))
        events: list = []
        for _ in range(10):
            incoming = wire.take()
            if not incoming:
                break
            events += client.receive_data(incoming)
            received += b"".join(manager.filter(client.data_to_send()))
        return merged(events), received

    events, _ = exchange(client.initiate())
    assert ComPortOption(True) in events
    assert (client.com_port_enabled, client.binary_local, client.binary_remote) == (True, True, True)

    line = LineSettings(baud=0x0001FFFF, data_bits=7, parity=Parity.EVEN, stop_bits=StopBits.TWO,
                        flow_out=FlowControl.RTSCTS)  # fmt: skip
    events, _ = exchange(b"".join(client.send(command) for command in settings_commands(line)))
    assert (device.baudrate, device.bytesize, device.parity, device.stopbits, device.rtscts) == (
        0x0001FFFF, 7, serial.PARITY_EVEN, serial.STOPBITS_TWO, True)  # fmt: skip
    assert events[:5] == settings_commands(line)[:5]  # pyserial ignores inbound flow commands

    events, _ = exchange(client.send(SetControl(Control.DTR_OFF)) + client.send(PurgeData(Purge.BOTH)))
    assert events == [SetControl(Control.DTR_OFF), PurgeData(Purge.BOTH)]
    _, received = exchange(client.send_data(b"\xff\x00\r\x00\xff\xff"))
    assert received == b"\xff\x00\r\x00\xff\xff"
    wire.write(b"".join(manager.escape(b"\xffrx\r\x00")))
    manager.check_modem_lines(force_notification=True)
    assert client.receive_data(wire.take()) == [
        Data(b"\xffrx\r\x00"),
        # loop:// wires DTR to DSR: the DTR_OFF above dropped DSR.
        NotifyModemState(ModemState.CD | ModemState.CTS | ModemState.DELTA_DSR),
    ]


PYSERIAL_CLIENT = textwrap.dedent(
    """
    import sys, serial
    port = serial.serial_for_url(
        "rfc2217://127.0.0.1:" + sys.argv[1], baudrate=19200, bytesize=7, parity="E", stopbits=2, timeout=5)
    port.write(b"hello\\xff\\r\\x00")
    port.flush()
    print(repr(port.read(6)), flush=True)
    port.close()
    """
)


def test_server_against_pyserial_client() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", PYSERIAL_CLIENT, str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        sock, _ = listener.accept()
        with sock:
            server = Connection(Role.SERVER)
            sock.sendall(server.initiate())
            events: list = []
            deadline = time.monotonic() + 10
            while Data(b"hello\xff\r\x00") not in merged(events) and time.monotonic() < deadline:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(4096)
                if not chunk:
                    break
                for event in server.receive_data(chunk):
                    events.append(event)
                    if not isinstance(event, (Data, ComPortOption, OptionChange, ProtocolError)):
                        sock.sendall(server.send(event))  # a server answers with what is in force
                sock.sendall(server.data_to_send())
            sock.sendall(server.send_data(b"wor\xffld"))
            out, err = proc.communicate(timeout=15)
    finally:
        listener.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert out.decode().strip() == repr(b"wor\xffld"), err.decode()
    assert server.com_port_enabled is True
    commands = [e for e in events if not isinstance(e, (Data, OptionChange))]
    assert commands == [
        ComPortOption(True),
        SetBaudRate(19200),
        SetDataSize(7),
        SetParity(3),
        SetStopSize(2),
        SetControl(Control.FLOW_NONE),
        SetControl(Control.DTR_ON),
        SetControl(Control.RTS_ON),
        PurgeData(Purge.RECEIVE),
        PurgeData(Purge.TRANSMIT),
    ]
    assert not any(isinstance(e, ProtocolError) for e in events)


# -- real serial servers --------------------------------------------------------------


def read_events(sock: socket.socket, conn: Connection, done, timeout: float = 5.0) -> list:
    """Events until ``done(events)``; the codec's own answers are sent on the way."""
    events: list = []
    deadline = time.monotonic() + timeout
    while not done(events) and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            break
        if not chunk:
            break
        events = merged(events + conn.receive_data(chunk))
        sock.sendall(conn.data_to_send())
    return events


@pytest.fixture
def ser2net_session(ser2net: Ser2net, device: PtyDevice) -> Iterator[tuple[socket.socket, PtyDevice]]:
    """A connection to ser2net's RFC 2217 accepter (see conftest.py) and its far-end "UART"."""
    with socket.create_connection(("127.0.0.1", ser2net.port), timeout=5) as sock:
        yield sock, device


def test_client_against_ser2net(ser2net_session) -> None:
    sock, device = ser2net_session
    master = device.master
    client = Connection(Role.CLIENT)
    sock.sendall(client.initiate())
    read_events(sock, client, lambda _: client.com_port_enabled is not None and client.binary_remote)
    assert (client.com_port_enabled, client.binary_local, client.binary_remote) == (True, True, True)

    line = LineSettings(baud=19200, stop_bits=StopBits.TWO)
    sock.sendall(client.send(Signature("")) + b"".join(client.send(c) for c in settings_commands(line)))
    events = read_events(sock, client, lambda ev: Signature("ser2net") in ev and SetStopSize(2) in ev)
    assert Signature("ser2net") in events and SetBaudRate(19200) in events and SetStopSize(2) in events
    attrs = termios.tcgetattr(master)  # the device's termios, while the client is connected
    assert attrs[5] == termios.B19200 and attrs[2] & termios.CSTOPB

    sock.sendall(client.send_data(b"\xff\x00\r\x00\xff\xfftx"))
    assert device.read_exact(8) == b"\xff\x00\r\x00\xff\xfftx"
    os.write(master, b"\xffrx\r\x00\r")
    events = read_events(sock, client, lambda ev: Data(b"\xffrx\r\x00\r") in ev)
    assert Data(b"\xffrx\r\x00\r") in events
    assert not any(isinstance(e, ProtocolError) for e in events)


@pytest.fixture
def sredird_session(device: PtyDevice, start_peer, tmp_path: Path) -> Iterator[tuple[socket.socket, PtyDevice]]:
    """A connection to sredird (inetd-style: socat supplies the listener) on ``device``."""
    if shutil.which("sredird") is None or shutil.which("socat") is None:
        pytest.skip("sredird or socat is not installed")
    server = start_peer(Socat(tmp_path / "sredird", "TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr",
                              f"EXEC:sredird 7 {device.path} {tmp_path / 'lock'},nofork"))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        yield sock, device


def test_client_against_sredird(sredird_session) -> None:
    sock, device = sredird_session
    master = device.master
    client = Connection(Role.CLIENT)
    sock.sendall(client.initiate())
    read_events(sock, client, lambda _: client.com_port_enabled is not None and client.binary_remote)
    assert (client.com_port_enabled, client.binary_local, client.binary_remote) == (True, True, True)
    # sredird answers SET-BAUDRATE with 8 bytes and sends NOTIFY bursts.
    sock.sendall(client.send(SetBaudRate(19200)) + client.send(Signature("")))
    events = read_events(sock, client, lambda ev: any(isinstance(e, Signature) for e in ev))
    assert SetBaudRate(19200) in events
    assert [e.text.split()[0] for e in events if isinstance(e, Signature)] == ["SRedird"]
    assert not any(isinstance(e, ProtocolError) for e in events)
    assert termios.tcgetattr(master)[5] == termios.B19200
