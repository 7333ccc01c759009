"""UART fidelity end to end: modem lines, line state, pinned framing, purges,
data while closed and flow-control bytes, against real peers on loopback.

A pty has no modem lines and forgets data bits and parity, so what a port does
to DTR/RTS and framing is checked where it shows: on the wire (``WireProxy``
in front of ser2net), in the answers of a server (``vcom share`` with a
simulated device, or the scripted server of ``uart_peers.py``), and in what a
program on the port experiences (``uart_dialer.py``, a program that dials a
modem on its controlling tty and reports how the call ended).
"""

from __future__ import annotations

import contextlib
import os
import termios
import tty
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from peers import (
    PURGE_DATA,
    SET_BAUDRATE,
    SET_CONTROL,
    SET_DATASIZE,
    SET_PARITY,
    SET_STOPSIZE,
    Data,
    Item,
    PtyDevice,
    Ser2net,
    Stream,
    Subnegotiation,
    Vcom,
    WireProxy,
    com_port_commands,
    drain,
    handshake,
    open_program,
    pump,
    read_until,
    stty,
    wait_settings,
    wait_until,
    write_all,
)
from uart_peers import (
    LINE_BREAK,
    LINE_FRAMING,
    LINE_OVERRUN,
    LINE_PARITY,
    MODEM_CD,
    MODEM_CTS,
    MODEM_DSR,
    SET_LINESTATE_MASK,
    SET_MODEMSTATE_MASK,
    Dialer,
    LineStateServer,
)

# RFC 2217 SET-CONTROL values for the modem lines vcom drives.
DTR_ON, DTR_OFF, RTS_ON, RTS_OFF = 8, 9, 11, 12
# SET-CONTROL values that set flow control (outbound 1-3, inbound 14-16): part of the line settings.
FLOW_CONTROLS = (1, 2, 3, 14, 15, 16)
# The masks vcom asks for: every modem line and delta but trailing-edge RI; break, framing, parity, overrun.
MODEMSTATE_MASK, LINESTATE_MASK = 0xFB, 0x1E
PARITY_EVEN = 3
STOPSIZE_TWO = 2
SIM_MODEM_GUARD = 1.0  # sim:modem's escape guard time (Hayes S12 default)
NO_LINE_ERRORS = {"overrun": 0, "parity": 0, "framing": 0, "break": 0}


# ---------------------------------------------------------------------------
# Helpers


@contextlib.contextmanager
def program(path: str | os.PathLike[str], *, flush: bool = True) -> Iterator[int]:
    """A program holding the port open (raw, non-blocking) for the ``with`` block; closing is part of the test.

    ``flush=False`` goes raw without discarding input (TCSANOW instead of TCSAFLUSH), for a test of
    what the port holds for a program at open.
    """
    if flush:
        fd = open_program(path)
    else:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(fd, termios.TCSANOW)
    try:
        yield fd
    finally:
        os.close(fd)


def set_speed(fd: int, speed: int) -> None:
    """What a program does to hang up (B0) or pick a speed: ``stty -F PORT 0`` reports a failure on a pty
    although the pty takes B0, so the program's own fd sets it."""
    attrs = termios.tcgetattr(fd)
    attrs[4] = attrs[5] = speed
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def line_controls(items: list[Item]) -> list[int]:
    """The DTR/RTS SET-CONTROL values among ``items``, in order."""
    return [c.value[0] for c in com_port_commands(items, SET_CONTROL)
            if c.value and c.value[0] in (DTR_ON, DTR_OFF, RTS_ON, RTS_OFF)]


def values(items: list[Item], command: int) -> list[int]:
    """The values of one RFC 2217 command among ``items`` (baud rates as 4-byte numbers)."""
    return [c.number for c in com_port_commands(items, command)]


def first_index(items: list[Item], predicate: Callable[[Subnegotiation], bool]) -> int:
    found = [i for i, item in enumerate(items) if isinstance(item, Subnegotiation) and predicate(item)]
    assert found, "command not on the wire"
    return found[0]


def is_command(command: int, *wanted: int) -> Callable[[Subnegotiation], bool]:
    return lambda item: item.command == command and (not wanted or (bool(item.value) and item.value[0] in wanted))


def wait_wire(fetch: Callable[[], list[Item]], predicate: Callable[[list[Item]], bool], what: str,
              timeout: float = 15.0) -> list[Item]:
    """Wait until what crossed the wire satisfies ``predicate``; the failure shows the RFC 2217 commands seen."""
    seen: list[list[Item]] = [[]]

    def check() -> list[Item] | None:
        seen[0] = fetch()
        return seen[0] if predicate(seen[0]) else None

    try:
        return wait_until(check, timeout, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; RFC 2217 commands seen: {com_port_commands(seen[0])}") from None


def wait_closed(proxy: WireProxy, conn: int, timeout: float = 15.0) -> None:
    wait_until(lambda: any(r["event"] == "close" and r["conn"] == conn for r in proxy.records()), timeout,
               f"connection {conn} to end")


def signals_are(**expected: bool | None) -> Callable[[dict[str, Any]], bool]:
    return lambda status: all(status["signals"][name] is value for name, value in expected.items())


# ---------------------------------------------------------------------------
# 1. DTR and RTS on the wire


def test_dtr_rts_follow_open_b0_and_the_hupcl_close(
    vcom: Vcom, ser2net: Ser2net, device: PtyDevice, start_peer, tmp_path: Path
):
    proxy = start_peer(WireProxy(tmp_path / "proxy", ser2net.port))
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{proxy.port}", "--linger", "1")

    def wire() -> list[Item]:
        return proxy.client_items(1)

    with program(port) as fd:
        handshake(fd, device)
        items = wait_wire(wire, lambda items: len(line_controls(items)) >= 2, "DTR and RTS raised at open")
        assert line_controls(items) == [DTR_ON, RTS_ON]
        # Raised once the line is set up: after every line setting of the connect.
        raised = first_index(items, is_command(SET_CONTROL, DTR_ON))
        for command in (SET_BAUDRATE, SET_DATASIZE, SET_PARITY, SET_STOPSIZE):
            assert first_index(items, is_command(command)) < raised, command
        assert first_index(items, is_command(SET_CONTROL, *FLOW_CONTROLS)) < raised

        set_speed(fd, termios.B0)  # the termios way to hang up: DTR only
        wait_wire(wire, lambda items: len(line_controls(items)) >= 3, "DTR dropped at B0")
        set_speed(fd, termios.B9600)
        items = wait_wire(wire, lambda items: len(line_controls(items)) >= 4, "DTR raised again at 9600")
        assert line_controls(items) == [DTR_ON, RTS_ON, DTR_OFF, DTR_ON]

    # The last close with HUPCL (a fresh port has it) drops both, before the lingering connection ends.
    wait_closed(proxy, 1)
    controls = line_controls(wire())
    assert controls[:4] == [DTR_ON, RTS_ON, DTR_OFF, DTR_ON]
    assert sorted(controls[4:]) == [DTR_OFF, RTS_OFF], controls
    assert proxy.connections() == 1


def test_without_hupcl_the_last_close_leaves_dtr_and_rts_up(
    vcom: Vcom, ser2net: Ser2net, device: PtyDevice, start_peer, tmp_path: Path
):
    proxy = start_peer(WireProxy(tmp_path / "proxy", ser2net.port))
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{proxy.port}", "--linger", "1")

    with program(port) as fd:
        handshake(fd, device)
        wait_wire(lambda: proxy.client_items(1), lambda items: len(line_controls(items)) >= 2, "DTR and RTS raised")
        stty(port, "-hupcl")
        # vcom reads the pty in order, so data written after the change proves it saw the change.
        handshake(fd, device)

    wait_closed(proxy, 1)
    assert line_controls(proxy.client_items(1)) == [DTR_ON, RTS_ON]


# ---------------------------------------------------------------------------
# 2. Modem inputs from vcom's own server


def test_echo_plug_reports_its_inputs_and_follows_dtr(vcom: Vcom, tmp_path: Path):
    listen = vcom.share("sim:echo")
    port = tmp_path / "ttyE0"
    vcom.add(port, f"127.0.0.1:{listen}")
    # Not connected yet: nothing is known of the inputs.
    assert signals_are(cts=None, dsr=None, dcd=None, ri=None)(vcom.status(port)), vcom.status(port)["signals"]

    with program(port) as fd:
        # The plug wires DTR to DSR and DCD, RTS to CTS.
        status = vcom.wait_status(port, signals_are(cts=True, dsr=True, dcd=True), what="CTS, DSR and DCD up")
        assert signals_are(dtr=True, rts=True, ri=False)(status), status["signals"]

        set_speed(fd, termios.B0)
        status = vcom.wait_status(port, signals_are(dsr=False, dcd=False), what="DSR and DCD down with DTR")
        assert signals_are(dtr=False, rts=True, cts=True)(status), status["signals"]

        set_speed(fd, termios.B9600)
        vcom.wait_status(port, signals_are(dtr=True, dsr=True, dcd=True), what="DSR and DCD up again")


# ---------------------------------------------------------------------------
# 3. Line state from a scripted server


def test_line_errors_are_counted_and_the_masks_asked_for(vcom: Vcom, start_peer, tmp_path: Path):
    server = start_peer(LineStateServer(tmp_path / "server", [LINE_BREAK, LINE_FRAMING, LINE_PARITY, LINE_OVERRUN],
                                        modem_state=MODEM_CD | MODEM_DSR | MODEM_CTS))
    port = tmp_path / "ttyL0"
    vcom.add(port, f"127.0.0.1:{server.port}")
    assert vcom.status(port)["line_errors"] == NO_LINE_ERRORS

    with program(port):
        # The server notifies only what the masks let through (its initial LINESTATE-MASK is 0).
        status = vcom.wait_status(port, lambda s: sum(s["line_errors"].values()) >= 4, what="four line errors")
        assert status["line_errors"] == {"overrun": 1, "parity": 1, "framing": 1, "break": 1}
        status = vcom.wait_status(port, signals_are(cts=True, dsr=True, dcd=True), what="modem state notified")
        assert status["signals"]["ri"] is False

    items = server.client_items(1)
    assert values(items, SET_MODEMSTATE_MASK) == [MODEMSTATE_MASK]
    assert values(items, SET_LINESTATE_MASK) == [LINESTATE_MASK]
    # The masks come before the line settings, so the first notifications describe the line as set.
    settings_start = first_index(items, is_command(SET_BAUDRATE))
    assert first_index(items, is_command(SET_MODEMSTATE_MASK)) < settings_start
    assert first_index(items, is_command(SET_LINESTATE_MASK)) < settings_start


# ---------------------------------------------------------------------------
# 4. Carrier loss hangs up the program, as on a real modem line


@pytest.mark.parametrize(
    ("options", "clocal", "hung_up"),
    [
        pytest.param([], False, True, id="hangup"),
        pytest.param(["--no-hangup-on-dcd"], False, False, id="no-hangup-on-dcd"),
        pytest.param([], True, False, id="clocal"),
    ],
)
def test_carrier_loss_hangs_up_the_program(vcom: Vcom, tmp_path: Path, options: list[str], clocal: bool,
                                           hung_up: bool):
    listen = vcom.share("sim:modem")
    port = tmp_path / "ttyM0"
    vcom.add(port, f"127.0.0.1:{listen}", *options)
    dialer = Dialer(port, clocal=clocal, guard=SIM_MODEM_GUARD)
    try:
        if not hung_up:
            # Carrier up (dialled), then down (ATH): once vcom shows the drop it has acted on it.
            vcom.wait_status(port, signals_are(dcd=True), what="carrier up")
            vcom.wait_status(port, signals_are(dcd=False), what="carrier down")
            dialer.probe()
        report = dialer.report(timeout=30)
    finally:
        dialer.stop()

    said = f"the dialing program reported {report}"
    assert report["ctty"] is True, said  # otherwise no SIGHUP could be expected
    assert report["connected"] and report["escaped"], said
    status = vcom.status(port)
    assert status["hangup_on_dcd"] is ("--no-hangup-on-dcd" not in options)
    if hung_up:
        assert report["sighup"] is True, said
        assert report["end"] in ("eof", "eio"), said
        assert status["hangups"] == 1
    else:
        assert report["sighup"] is False, said
        assert report["end"] == "alive" and report["probe_ok"] is True, said
        assert status["hangups"] == 0

    # The same path opens again at once and talks to the modem.
    with program(port) as fd:
        write_all(fd, b"AT\r")
        read_until(fd, b"OK")


# ---------------------------------------------------------------------------
# 5. Pinned settings


def test_pinned_framing_wins_and_is_sent_again_after_a_restart(
    vcom: Vcom, ser2net: Ser2net, device: PtyDevice, start_peer, tmp_path: Path
):
    proxy = start_peer(WireProxy(tmp_path / "proxy", ser2net.port))
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{proxy.port}", "--data-bits", "7", "--parity", "even", "--stop-bits", "2")

    def framing_on_wire(conn: int) -> None:
        items = proxy.client_items(conn)
        assert values(items, SET_DATASIZE) == [7], com_port_commands(items)
        assert values(items, SET_PARITY) == [PARITY_EVEN], com_port_commands(items)
        assert set(values(items, SET_STOPSIZE)) == {STOPSIZE_TWO}, com_port_commands(items)

    with program(port) as fd:  # raw mode: the program asks for 8N1
        handshake(fd, device)
        # The pty far end keeps CSTOPB; data bits and parity show in the server's answers.
        wait_settings(device, cstopb=True)
        status = vcom.wait_status(
            port, lambda s: s["remote_settings"]["data_bits"] == 7 and s["remote_settings"]["parity"] == "even"
            and s["remote_settings"]["stop_bits"] == "2", what="the server's answers to the pinned framing")
        framing_on_wire(1)
        assert sorted(status["pinned"]) == ["data_bits", "parity", "stop_bits"]
        assert (status["settings"]["data_bits"], status["settings"]["parity"], status["settings"]["stop_bits"]) == (
            8, "none", "1")
        effective = status["effective_settings"]
        assert (effective["data_bits"], effective["parity"], effective["stop_bits"]) == (7, "even", "2")

        # The program asks for one stop bit and a new speed: the speed goes, the pin stays.
        stty(port, "19200", "-cstopb")
        handshake(fd, device)
        wait_settings(device, baud=19200, cstopb=True)
        framing_on_wire(1)

        ser2net.kill()
        device.reset(termios.B9600)  # forget the framing: seeing it again proves it was re-sent
        vcom.wait_status(port, lambda s: s["state"] != "connected", what="the loss noticed")
        ser2net.start()
        vcom.wait_status(port, lambda s: s["state"] == "connected" and s["reconnects"] >= 1, timeout=30,
                         what="reconnected")
        wait_settings(device, baud=19200, cstopb=True)
        last = proxy.connections()
        assert last >= 2
        wait_wire(lambda: proxy.client_items(last), lambda items: bool(values(items, SET_PARITY)), "framing re-sent")
        framing_on_wire(last)
        items = proxy.client_items(last)
        assert values(items, SET_MODEMSTATE_MASK) == [MODEMSTATE_MASK]
        assert values(items, SET_LINESTATE_MASK) == [LINESTATE_MASK]


def test_pinned_speed_wins_over_the_program(
    vcom: Vcom, ser2net: Ser2net, device: PtyDevice, start_peer, tmp_path: Path
):
    proxy = start_peer(WireProxy(tmp_path / "proxy", ser2net.port))
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{proxy.port}", "--baud", "4800", "--pin-baud")

    with program(port) as fd:
        handshake(fd, device)
        wait_settings(device, baud=4800)
        stty(port, "19200")
        status = vcom.wait_status(port, lambda s: s["settings"]["baud"] == 19200, what="the program's 19200 seen")
        handshake(fd, device)  # anything sent for that change is ahead of this data

        assert device.settings().baud == 4800
        assert status["effective_settings"]["baud"] == 4800
        assert "baud" in status["pinned"]
        assert set(values(proxy.client_items(1), SET_BAUDRATE)) == {4800}


# ---------------------------------------------------------------------------
# 6. Purges


def test_tcflush_sends_purge_data(vcom: Vcom, ser2net: Ser2net, device: PtyDevice, start_peer, tmp_path: Path):
    proxy = start_peer(WireProxy(tmp_path / "proxy", ser2net.port))
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{proxy.port}")

    with program(port) as fd:
        handshake(fd, device)
        # Opening in raw mode already flushed once (tty.setraw uses TCSAFLUSH); the handshake's
        # data left after that purge, so the wire now shows every purge before the test's own.
        expected = values(proxy.client_items(1), PURGE_DATA)
        # RFC 2217 PURGE-DATA: 1 the server's receive buffer, 2 its transmit buffer, 3 both.
        for queue, purge in ((termios.TCIFLUSH, 1), (termios.TCOFLUSH, 2), (termios.TCIOFLUSH, 3)):
            termios.tcflush(fd, queue)
            expected.append(purge)
            items = wait_wire(lambda: proxy.client_items(1),
                              lambda items: len(values(items, PURGE_DATA)) >= len(expected), f"PURGE-DATA {purge}")
            assert values(items, PURGE_DATA) == expected


# ---------------------------------------------------------------------------
# 7. Data that arrives while the port is closed


def test_data_arriving_while_closed_is_dropped_not_delivered_later(vcom: Vcom, start_peer, tmp_path: Path):
    proxy = start_peer(WireProxy(tmp_path / "proxy", vcom.share("sim:gps")))
    port = tmp_path / "ttyG0"
    vcom.add(port, f"127.0.0.1:{proxy.port}", "--connect", "always")
    status = vcom.wait_status(port, lambda s: s["bytes_from_remote"] > 200, timeout=20, what="two fixes received")
    assert status["open"] is False
    # Everything that arrived so far arrived with nobody to read it.
    assert status["dropped_bytes"] == status["bytes_from_remote"] > 200

    with program(port, flush=False) as fd:  # no flush at open: whatever the pty held would show
        got = bytearray(read_until(fd, b"$GPRMC"))  # at least one fix after the open
        status = vcom.status(port)  # open now: nothing more is dropped
        got += drain(fd)
    assert status["open"] is True
    # What the program read is the server's stream exactly where the dropped part ends: nothing
    # that arrived while the port was closed was kept for it, and nothing after was lost.
    remote = b"".join(item.data for item in proxy.server_items(1) if isinstance(item, Data))
    skipped = status["dropped_bytes"]
    assert skipped > 200
    assert bytes(got) == remote[skipped : skipped + len(got)], (bytes(got[:80]), remote[skipped - 40 : skipped + 40])


# ---------------------------------------------------------------------------
# 8. XON and XOFF are data


@pytest.mark.parametrize("transport", ["rfc2217", "raw"])
def test_xon_xoff_bytes_cross_both_ways(vcom: Vcom, ser2net: Ser2net, device: PtyDevice, tmp_path: Path,
                                        transport: str):
    target = ser2net.target if transport == "rfc2217" else ser2net.raw_target
    port = tmp_path / "ttyV0"
    vcom.add(port, target, "--baud", "115200")
    every_byte = bytes(range(256))
    to_device = every_byte * 64 + b"\x13" * 4096 + every_byte * 64
    to_program = every_byte[::-1] * 64 + b"\x13\x11" * 2048 + every_byte * 64

    with program(port) as fd:
        stty(port, "raw", "-ixon", "-ixoff")
        handshake(fd, device)
        if transport == "rfc2217":
            wait_settings(device, ixon=False, ixoff=False)
        streams = [Stream(fd, device.master, to_device), Stream(device.master, fd, to_program)]
        pump(streams, timeout=30)

    assert bytes(streams[0].received) == to_device
    assert bytes(streams[1].received) == to_program
