"""Modem lines and break from a program, against a server that is not vcom.

The program is a pyserial script under ``vcom wrap`` (the preload library
hands its TIOCM* and break calls to the manager).  The server is the scripted
RFC 2217 server of uart_peers.py: it records every byte it receives, decoded
by peers.decode_telnet (independent of vcom's codec), and reports CTS, DSR and
DCD up once the client asks for modem-state notifications.
"""

from __future__ import annotations

from pathlib import Path

from peers import SET_CONTROL, Vcom, com_port_commands, wait_until
from uart_peers import MODEM_CD, MODEM_CTS, MODEM_DSR, LineStateServer

DTR_ON, DTR_OFF, RTS_ON, RTS_OFF, BREAK_ON, BREAK_OFF = 8, 9, 11, 12, 5, 6
LINE_AND_BREAK = (DTR_ON, DTR_OFF, RTS_ON, RTS_OFF, BREAK_ON, BREAK_OFF)


def test_dtr_rts_and_break_reach_a_scripted_server_in_order(vcom: Vcom, start_peer, tmp_path: Path):
    server = start_peer(LineStateServer(tmp_path / "server", [], modem_state=MODEM_CD | MODEM_DSR | MODEM_CTS))
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{server.port}")
    seen = vcom.wrap(f"""
        import json, time, serial
        s = serial.Serial({str(port)!r}, 115200, timeout=1)
        end = time.monotonic() + 15
        while not (s.cts and s.dsr and s.cd) and time.monotonic() < end:
            time.sleep(0.02)
        out = {{"inputs": [s.cts, s.dsr, s.cd, s.ri]}}
        s.dtr = False
        s.rts = False
        s.dtr = True
        s.send_break(0.05)
        s.break_condition = True
        s.break_condition = False
        print(json.dumps(out))
    """)
    # What the server notified reached the program's TIOCMGET.
    assert seen == {"inputs": [True, True, True, False]}

    def controls() -> list[int]:
        return [c.value[0] for c in com_port_commands(server.client_items(1), SET_CONTROL)
                if c.value and c.value[0] in LINE_AND_BREAK]

    # Raised at open; the program's changes in its order; a timed break and a set/cleared one; then
    # the close (HUPCL) drops DTR, the one line still up.
    expected = [DTR_ON, RTS_ON, DTR_OFF, RTS_OFF, DTR_ON, BREAK_ON, BREAK_OFF, BREAK_ON, BREAK_OFF, DTR_OFF]
    wait_until(lambda: len(controls()) >= len(expected), 15, f"{len(expected)} SET-CONTROL commands")
    assert controls() == expected
    status = vcom.status(port)
    assert (status["signals"]["dtr"], status["signals"]["rts"]) == (False, False)
