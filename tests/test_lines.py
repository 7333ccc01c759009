"""Modem lines and break from the program itself, through `vcom wrap` and the
preload library: a pty cannot carry them, the library hands them to the
manager, the manager sends SET-CONTROL at once.

The program here is a real pyserial script run under `vcom wrap`; the far end
is `vcom share sim:echo` (a loopback plug: DTR drives DSR and DCD, RTS drives
CTS), with a recording proxy between the two where the wire order matters.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

from peers import SET_CONTROL, Vcom, WireProxy, com_port_commands, free_port, wait_until

# ESP32 auto-reset (esptool's classic reset): (dtr, rts) steps 20-50 ms apart.
DANCE = [(False, True), (True, False), (False, False), (True, True), (False, True), (False, False)]


def share_echo(vcom: Vcom) -> int:
    port = free_port()
    vcom.ok("share", "sim:echo", "--listen", f"127.0.0.1:{port}")
    return port


def run_wrapped(vcom: Vcom, script: str, timeout: float = 60) -> dict:
    result = subprocess.run([sys.executable, "-m", "vcom", "wrap", sys.executable, "-c", textwrap.dedent(script)],
                            env=vcom.env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_pyserial_drives_and_reads_the_modem_lines(vcom: Vcom, tmp_path):
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{share_echo(vcom)}")
    seen = run_wrapped(vcom, f"""
        import json, time, serial
        s = serial.Serial({str(port)!r}, 115200, timeout=1)   # pyserial raises DTR and RTS on open
        def wait(pred):
            end = time.monotonic() + 10
            while not pred() and time.monotonic() < end:
                time.sleep(0.02)
            return pred()
        out = {{"all_up": wait(lambda: s.cts and s.dsr and s.cd)}}
        s.dtr = False
        out["dtr_off"] = wait(lambda: not s.dsr and not s.cd) and s.cts
        s.rts = False
        out["rts_off"] = wait(lambda: not s.cts)
        s.dtr = True
        out["dtr_on"] = wait(lambda: s.dsr and s.cd) and not s.cts
        s.send_break(0.05)
        s.break_condition = True
        s.break_condition = False
        print(json.dumps(out))
    """)
    assert seen == {"all_up": True, "dtr_off": True, "rts_off": True, "dtr_on": True}
    vcom.wait_status("sim:echo", lambda s: s["device_stats"]["breaks"] >= 2, what="two breaks at the device")
    # The program has exited: its close (HUPCL) dropped both lines.
    status = vcom.wait_status(port, lambda s: s["signals"]["dtr"] is False, what="DTR dropped at the close")
    assert status["signals"]["rts"] is False


def test_a_burst_of_line_changes_reaches_the_server_in_order(vcom: Vcom, start_peer, tmp_path):
    proxy = start_peer(WireProxy(tmp_path / "proxy", share_echo(vcom)))
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{proxy.port}")
    run_wrapped(vcom, f"""
        import fcntl, json, struct, termios, time
        import serial
        s = serial.Serial({str(port)!r}, 115200)
        time.sleep(0.5)  # connected and negotiated
        for dtr, rts in {DANCE!r}:
            bits = (termios.TIOCM_DTR if dtr else 0) | (termios.TIOCM_RTS if rts else 0)
            fcntl.ioctl(s.fileno(), termios.TIOCMSET, struct.pack("I", bits))
            time.sleep(0.03)
        print(json.dumps({{}}))
    """)
    wanted = []
    dtr, rts = True, True  # raised by the open
    for new_dtr, new_rts in DANCE:
        if new_dtr != dtr:
            wanted.append(8 if new_dtr else 9)
        if new_rts != rts:
            wanted.append(11 if new_rts else 12)
        dtr, rts = new_dtr, new_rts

    def sent() -> list[int]:
        values = [c.value[0] for c in com_port_commands(proxy.client_items(), SET_CONTROL) if c.value]
        return [v for v in values if v in (8, 9, 11, 12)]

    wait_until(lambda: len(sent()) >= 2 + len(wanted), 10, "every change on the wire")
    # DTR and RTS raised at open, then every change of the dance, each once, in the program's order.
    assert sent()[:2] == [8, 11]
    assert sent()[2:] == wanted


def test_only_a_process_holding_the_port_may_drive_its_lines(vcom: Vcom, tmp_path):
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{share_echo(vcom)}")
    rdev = os.stat(port).st_rdev
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(vcom.home / "lines.sock"))
        s.sendall(f"{rdev} set 0\n".encode())
        assert s.recv(64) == b"no\n"  # this test process does not have the port open
    assert vcom.status(port)["signals"]["dtr"] is None


def test_other_ttys_keep_their_own_answers_under_wrap(vcom: Vcom, tmp_path):
    vcom.add(tmp_path / "ttyV0", f"127.0.0.1:{share_echo(vcom)}")
    seen = run_wrapped(vcom, """
        import errno, fcntl, json, os, struct, termios
        master, slave = os.openpty()   # a pty that is not a vcom port
        try:
            fcntl.ioctl(slave, termios.TIOCMGET, struct.pack("I", 0))
            result = "answered"
        except OSError as exc:
            result = errno.errorcode[exc.errno]
        print(json.dumps({"tiocmget": result}))
    """)
    assert seen == {"tiocmget": "ENOTTY"}
