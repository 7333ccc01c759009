"""The interposer end to end: programs on vcom ports get what a UART gives.

Real programs (pyserial scripts, a statically linked C program, pymodbus,
stty) run under ``vcom wrap`` (seccomp) or ``vcom wrap --preload``; the far
end is ``vcom share sim:echo`` (a loop-back plug that reports the settings it
was given) or ser2net behind a recording proxy, so that what reached the wire
is checked, not only what the program was told.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import pytest
from modbus_peer import DEVICE_ID, REGISTERS, modbus_behind_ser2net
from peers import (
    PYTHON,
    SET_BAUDRATE,
    SET_CONTROL,
    SET_DATASIZE,
    SET_PARITY,
    SET_STOPSIZE,
    Ser2net,
    Vcom,
    WireProxy,
    com_port_commands,
    data_and_commands,
    wait_until,
    wrap_command,
)

HERE = Path(__file__).resolve().parent
MODES = ["seccomp", "preload"]
# pyserial's names, what termios must read back, and what RFC 2217 sends (SET-DATASIZE, -PARITY, -STOPSIZE).
FRAMES = {
    "7E1": (dict(bytesize=7, parity="E", stopbits=1), (7, 3, 1)),
    "8E1": (dict(bytesize=8, parity="E", stopbits=1), (8, 3, 1)),
    "8O1": (dict(bytesize=8, parity="O", stopbits=1), (8, 2, 1)),
    "8M1": (dict(bytesize=8, parity="M", stopbits=1), (8, 4, 1)),
    "5N2": (dict(bytesize=5, parity="N", stopbits=2), (5, 1, 2)),
}
PARITY_NAMES = {1: "none", 2: "odd", 3: "even", 4: "mark", 5: "space"}
# ESP32 auto-reset (esptool's classic reset): (dtr, rts) steps 20-50 ms apart.
DANCE = [(False, True), (True, False), (False, False), (True, True), (False, True), (False, False)]


def share_echo(vcom: Vcom) -> int:
    return vcom.share("sim:echo")


def run_wrapped(vcom: Vcom, script: str, mode: str = "seccomp", timeout: float = 60) -> dict:
    result = subprocess.run(wrap_command(mode, PYTHON, "-c", textwrap.dedent(script)),
                            env=vcom.env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


FRAME_SCRIPT = """
    import json, sys, termios, serial
    CMSPAR = 0o10000000000
    for rounds in range(2):
        for name, options in {frames!r}.items():
            s = serial.Serial({port!r}, 19200, timeout=1, **options)
            cflag = termios.tcgetattr(s.fileno())[2]
            size = {{termios.CS5: 5, termios.CS6: 6, termios.CS7: 7, termios.CS8: 8}}[cflag & termios.CSIZE]
            odd = cflag & termios.PARODD
            parity = "N" if not cflag & termios.PARENB else (
                ("M" if odd else "S") if cflag & CMSPAR else ("O" if odd else "E"))
            stop = 2 if cflag & termios.CSTOPB else 1
            print(json.dumps({{"frame": name, "read_back": f"{{size}}{{parity}}{{stop}}"}}))
            sys.stdin.readline()
            s.close()
    print(json.dumps({{"done": True}}))
"""


@pytest.mark.parametrize("mode", MODES)
def test_pyserial_frames_are_exact_for_the_program_and_the_remote(vcom: Vcom, interactive, tmp_path, mode):
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{share_echo(vcom)}")
    frames = {name: options for name, (options, _) in FRAMES.items()}
    program = interactive(FRAME_SCRIPT.format(frames=frames, port=str(port)), mode)
    for _ in range(2):  # every frame twice: a reopen must not fail where the first open succeeded
        for name, (_, (size, parity, stop)) in FRAMES.items():
            step = program.expect()
            assert step == {"frame": name, "read_back": name}
            vcom.wait_status("sim:echo", lambda s, size=size, parity=parity, stop=stop: (
                s["settings"]["data_bits"], s["settings"]["parity"], s["settings"]["stop_bits"])
                == (size, PARITY_NAMES[parity], str(stop)), what=f"{name} at the device")
            status = vcom.status(port)
            assert status["interposed"] == [mode] and status["settings_exact"] is True
            assert (status["settings"]["data_bits"], status["settings"]["parity"]) == (size, PARITY_NAMES[parity])
            program.send()
    assert program.expect() == {"done": True}


@pytest.mark.parametrize("mode", MODES)
def test_the_frames_go_on_the_wire_to_ser2net(vcom: Vcom, device, start_peer, interactive, tmp_path, mode):
    if shutil.which("ser2net") is None:
        pytest.skip("ser2net is not installed")
    ser2net = start_peer(Ser2net(tmp_path / "ser2net", device.path))
    proxy = start_peer(WireProxy(tmp_path / "proxy", ser2net.port))
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{proxy.port}")
    frames = {name: options for name, (options, _) in FRAMES.items()}
    program = interactive(FRAME_SCRIPT.format(frames=frames, port=str(port)), mode)

    def last(command: int) -> int | None:
        sent = [c.value[0] for c in com_port_commands(proxy.client_items(), command) if c.value]
        return sent[-1] if sent else None

    for _ in range(2):
        for name, (_, wanted) in FRAMES.items():
            assert program.expect() == {"frame": name, "read_back": name}
            wait_until(lambda wanted=wanted: (last(SET_DATASIZE), last(SET_PARITY), last(SET_STOPSIZE)) == wanted,
                       15, f"{name} on the wire")
            program.send()
    assert program.expect() == {"done": True}


@pytest.mark.parametrize("mode", MODES)
def test_pins_win_on_the_wire_while_the_program_reads_back_its_own_frame(vcom: Vcom, interactive, tmp_path, mode):
    """`--data-bits 7 --parity even` pinned: an interposed program that asks for 8N2 reads back 8N2 (its
    call succeeded as asked), the remote UART runs 7E2, and status says which values are pinned."""
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{share_echo(vcom)}", "--data-bits", "7", "--parity", "even")
    frames = {"8N2": dict(bytesize=8, parity="N", stopbits=2)}
    program = interactive(FRAME_SCRIPT.format(frames=frames, port=str(port)), mode)
    assert program.expect() == {"frame": "8N2", "read_back": "8N2"}
    vcom.wait_status("sim:echo", lambda s: (s["settings"]["data_bits"], s["settings"]["parity"],
                                            s["settings"]["stop_bits"]) == (7, "even", "2"), what="7E2 at the device")
    status = vcom.status(port)
    assert (status["settings"]["data_bits"], status["settings"]["parity"]) == (8, "none")
    assert (status["effective_settings"]["data_bits"], status["effective_settings"]["parity"]) == (7, "even")
    assert sorted(status["pinned"]) == ["data_bits", "parity"]
    program.send()
    assert program.expect() == {"frame": "8N2", "read_back": "8N2"}  # the reopen reads back the same
    program.send()
    assert program.expect() == {"done": True}


@pytest.fixture(scope="module")
def uart_static(tmp_path_factory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    binary = tmp_path_factory.mktemp("static") / "uart_static"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(binary), str(HERE / "programs" / "uart_static.c")],
                   check=True, capture_output=True, timeout=120)
    assert not _has_interpreter(binary), "gcc -static made a dynamically linked program"
    return binary


def _has_interpreter(path: Path) -> bool:
    """Whether an ELF64 little-endian executable names a dynamic loader (PT_INTERP)."""
    import struct

    data = path.read_bytes()
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return any(struct.unpack_from("<I", data, phoff + i * phentsize)[0] == 3 for i in range(phnum))


def test_a_static_binary_gets_a_uart(vcom: Vcom, start_peer, tmp_path, uart_static):
    proxy = start_peer(WireProxy(tmp_path / "proxy", share_echo(vcom)))
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{proxy.port}")
    result = subprocess.run([PYTHON, "-m", "vcom", "wrap", str(uart_static), str(port)], env=vcom.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    seen = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert seen == {
        "tcsetattr": "ok", "readback": "8E2", "tiocmbis": "ok", "tiocmget": "DTR RTS CTS DSR CD", "icount": "ok",
        "tiocmiwait": "ok", "child": "ok", "cts_changes": "1", "tcsendbreak": "ok",
        # an ioctl the interposer does not answer gets what the kernel gives a pty
        "tiocgserial": os.strerror(errno.ENOTTY),
    }, result.stdout
    echo = vcom.wait_status("sim:echo", lambda s: s["device_stats"]["breaks"] >= 1, what="the break at the device")
    parity = [c.value[0] for c in com_port_commands(proxy.client_items(), SET_PARITY) if c.value]
    assert (echo["settings"]["baud"], echo["settings"]["data_bits"], echo["settings"]["parity"],
            echo["settings"]["stop_bits"]) == (38400, 8, "even", "2"), f"SET-PARITY on the wire: {parity}"
    assert parity[-1] == 3


def test_the_same_static_binary_without_wrap_gets_what_a_pty_gives(vcom: Vcom, tmp_path, uart_static):
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{share_echo(vcom)}")
    result = subprocess.run([str(uart_static), str(port)], capture_output=True, text=True, timeout=60)
    seen = dict(line.split("=", 1) for line in result.stdout.splitlines())
    # Parity does not stick (glibc's tcsetattr reports EINVAL for it when the speed stays the same);
    # the modem-line calls fail with ENOTTY.
    assert seen["readback"] == "other"
    assert seen["tiocmbis"] == os.strerror(errno.ENOTTY)


@pytest.mark.parametrize("mode", MODES)
def test_pyserial_drives_and_reads_the_modem_lines(vcom: Vcom, tmp_path, mode):
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
    """, mode)
    assert seen == {"all_up": True, "dtr_off": True, "rts_off": True, "dtr_on": True}
    vcom.wait_status("sim:echo", lambda s: s["device_stats"]["breaks"] >= 2, what="two breaks at the device")
    # The program has exited: its close (HUPCL) dropped both lines.
    status = vcom.wait_status(port, lambda s: s["signals"]["dtr"] is False, what="DTR dropped at the close")
    assert status["signals"]["rts"] is False


@pytest.mark.parametrize("mode", MODES)
def test_tcsbrkp_and_tcsendbreak_send_a_timed_break_between_the_bytes(vcom: Vcom, start_peer, tmp_path, mode):
    """TCSBRKP (a break of N tenths of a second) and tcsendbreak(fd, 0) (glibc's TCSBRK 0): each call lasts
    the break (a lower bound) and puts BREAK on and off on the wire between the bytes written around it."""
    proxy = start_peer(WireProxy(tmp_path / "proxy", share_echo(vcom)))
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{proxy.port}")
    seen = run_wrapped(vcom, f"""
        import fcntl, json, os, termios, time, tty
        fd = os.open({str(port)!r}, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(fd)
        os.write(fd, b"before")
        start = time.monotonic()
        fcntl.ioctl(fd, termios.TCSBRKP, 3)
        tcsbrkp = time.monotonic() - start
        os.write(fd, b"between")
        start = time.monotonic()
        termios.tcsendbreak(fd, 0)
        tcsendbreak = time.monotonic() - start
        os.write(fd, b"after")
        termios.tcdrain(fd)
        print(json.dumps({{"tcsbrkp": tcsbrkp, "tcsendbreak": tcsendbreak}}))
    """, mode)
    assert seen["tcsbrkp"] >= 0.3 * 0.99 and seen["tcsendbreak"] >= 0.25 * 0.99, seen

    def wire() -> list[object]:
        out: list[object] = []
        for item in data_and_commands(proxy.client_items(), SET_CONTROL):
            if isinstance(item, bytes):
                if out and isinstance(out[-1], bytes):
                    out[-1] += item
                else:
                    out.append(item)
            elif item.value and item.value[0] in (5, 6):  # BREAK on, BREAK off
                out.append("on" if item.value[0] == 5 else "off")
        return out

    wanted = [b"before", "on", "off", b"between", "on", "off", b"after"]
    wait_until(lambda: wire()[-len(wanted):] == wanted, 15, f"{wanted} on the wire")


def test_a_burst_of_line_changes_reaches_the_server_in_order(vcom: Vcom, start_peer, tmp_path):
    proxy = start_peer(WireProxy(tmp_path / "proxy", share_echo(vcom)))
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{proxy.port}")
    run_wrapped(vcom, f"""
        import fcntl, json, struct, termios, time
        import serial
        s = serial.Serial({str(port)!r}, 115200)
        end = time.monotonic() + 10
        while not s.cts and time.monotonic() < end:  # connected, negotiated, and the loop-back answered
            time.sleep(0.01)
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


def test_settings_and_lines_are_ordered_with_the_data_written_before_them(vcom: Vcom, start_peer, tmp_path):
    """Written at 9600, then 19200 set, then written again, then RTS dropped (RS-485 style), all before the
    connection is up: on the wire each byte follows the settings it was written under."""
    proxy = start_peer(WireProxy(tmp_path / "proxy", share_echo(vcom)))
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{proxy.port}")
    run_wrapped(vcom, f"""
        import fcntl, json, os, struct, termios, tty
        fd = os.open({str(port)!r}, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(fd)
        t = termios.tcgetattr(fd); t[4] = t[5] = termios.B9600; termios.tcsetattr(fd, termios.TCSANOW, t)
        os.write(fd, b"slow")
        t[4] = t[5] = termios.B19200; termios.tcsetattr(fd, termios.TCSANOW, t)
        os.write(fd, b"fast")
        fcntl.ioctl(fd, termios.TIOCMBIC, struct.pack("I", termios.TIOCM_RTS))
        os.write(fd, b"after")
        print(json.dumps({{}}))
    """)

    def wire() -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        for item in data_and_commands(proxy.client_items(), SET_BAUDRATE, SET_CONTROL):
            if isinstance(item, bytes):
                out.append(("data", item))
            elif item.command == SET_BAUDRATE:
                out.append(("baud", item.number))
            elif item.value[:1] == b"\x0c":
                out.append(("rts", False))
        return out

    def merged() -> list[tuple[str, object]]:
        # Coalesce data runs, keep the order of everything else.
        out: list[tuple[str, object]] = []
        for kind, value in wire():
            if kind == "data" and out and out[-1][0] == "data":
                out[-1] = ("data", out[-1][1] + value)
            else:
                out.append((kind, value))
        return out

    wait_until(lambda: b"after" in b"".join(v for k, v in merged() if k == "data"), 15, "all data on the wire")
    events = [e for e in merged() if e[0] != "baud" or e[1] in (9600, 19200)]
    data_at = {value: i for i, (kind, value) in enumerate(events) if kind == "data"}
    bauds = [(i, value) for i, (kind, value) in enumerate(events) if kind == "baud"]
    rts_off = [i for i, (kind, _) in enumerate(events) if kind == "rts"]
    assert set(data_at) == {b"slow", b"fast", b"after"}, events

    def baud_before(index: int) -> int:
        return [value for i, value in bauds if i < index][-1]

    assert baud_before(data_at[b"slow"]) == 9600, events
    assert baud_before(data_at[b"fast"]) == 19200, events
    assert data_at[b"fast"] < rts_off[0] < data_at[b"after"], events


@pytest.mark.parametrize("mode", MODES)
def test_tiocmiwait_wakes_on_the_remote_line_change(vcom: Vcom, interactive, tmp_path, mode):
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{share_echo(vcom)}")
    # The waiting thread blocks in TIOCMIWAIT for CTS; the other thread drops RTS, which the loop-back
    # plug turns into CTS going down at the remote.
    program = interactive(f"""
        import fcntl, json, struct, sys, termios, threading, time, serial
        s = serial.Serial({str(port)!r}, 9600)
        end = time.monotonic() + 10
        while not s.cts and time.monotonic() < end:
            time.sleep(0.01)
        print(json.dumps({{"cts": s.cts}}))
        sys.stdin.readline()
        done = []
        waiter = threading.Thread(target=lambda: done.append(fcntl.ioctl(s.fileno(), termios.TIOCMIWAIT,
                                                                         termios.TIOCM_CTS)))
        waiter.start()
        time.sleep(0.3)
        still_waiting = not done
        s.rts = False
        waiter.join(10)
        icount = struct.unpack("20i", fcntl.ioctl(s.fileno(), termios.TIOCGICOUNT, bytes(80)))
        print(json.dumps({{"waited": still_waiting, "woke": done == [0], "cts": s.cts, "cts_count": icount[0]}}))
    """, mode)
    assert program.expect() == {"cts": True}
    program.send()
    seen = program.expect()
    assert seen["waited"] and seen["woke"] and seen["cts"] is False and seen["cts_count"] >= 1, seen


def test_a_wrapped_program_without_a_manager_gets_what_an_unwrapped_one_gets(vcom: Vcom, tmp_path):
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{share_echo(vcom)}")
    script = f"""
        import errno, fcntl, json, os, struct, termios, time
        fd = os.open({str(port)!r}, os.O_RDWR | os.O_NOCTTY)
        start = time.monotonic()
        try:
            fcntl.ioctl(fd, termios.TIOCMGET, struct.pack("I", 0))
            got = "answered"
        except OSError as exc:
            got = errno.errorcode[exc.errno]
        print(json.dumps({{"tiocmget": got, "quick": time.monotonic() - start < 5}}))
    """
    # The manager's socket is gone (as after a crash) while the port's pty still exists.
    (vcom.home / "interposer.sock").unlink()
    assert run_wrapped(vcom, script) == {"tiocmget": "ENOTTY", "quick": True}
    assert run_wrapped(vcom, script, "preload") == {"tiocmget": "ENOTTY", "quick": True}


def test_only_a_process_holding_the_port_is_answered(vcom: Vcom, tmp_path):
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{share_echo(vcom)}")
    rdev = os.stat(port).st_rdev
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(vcom.home / "interposer.sock"))
        s.sendall(f"vcom1 preload {os.getpid()}\nmodem {rdev} set 0\ntcgets {rdev}\n".encode())
        answers = b""
        while answers.count(b"\n") < 2:
            chunk = s.recv(256)
            assert chunk, answers
            answers += chunk
    assert answers == b"no\nno\n"  # this test process does not have the port open
    assert vcom.status(port)["signals"]["dtr"] is None


def test_other_ttys_keep_their_own_answers(vcom: Vcom, tmp_path):
    vcom.add(tmp_path / "ttyV0", f"127.0.0.1:{share_echo(vcom)}")
    script = """
        import errno, fcntl, json, os, struct, termios
        master, slave = os.openpty()   # a pty that is not a vcom port
        try:
            fcntl.ioctl(slave, termios.TIOCMGET, struct.pack("I", 0))
            result = "answered"
        except OSError as exc:
            result = errno.errorcode[exc.errno]
        t = termios.tcgetattr(slave)
        t[2] = (t[2] & ~termios.CSIZE) | termios.CS7 | termios.PARENB
        try:
            termios.tcsetattr(slave, termios.TCSANOW, t)
            parity = "accepted"
        except termios.error as exc:
            parity = errno.errorcode[exc.args[0]]
        cc = [ord(c) for c in termios.tcgetattr(slave)[6][17:19]]
        print(json.dumps({"tiocmget": result, "cs7": parity, "cc": cc}))
    """
    for mode in MODES:
        assert run_wrapped(vcom, script, mode) == {"tiocmget": "ENOTTY", "cs7": "EINVAL", "cc": [0, 0]}, mode


def test_a_hostile_client_and_a_killed_program_leave_the_manager_serving(vcom: Vcom, interactive, tmp_path):
    port, other = tmp_path / "ttyV0", tmp_path / "ttyV1"
    echo = share_echo(vcom)
    vcom.add(port, f"127.0.0.1:{echo}")
    vcom.add(other, f"127.0.0.1:{echo}")
    sock_path = str(vcom.home / "interposer.sock")
    # Garbage, an endless line, a header and then silence, many at once.
    clients = []
    for payload in (b"\xff" * 1000, b"x" * 100_000, b"vcom1 preload 1\n", b"vcom1 preload 1\nmiwait 1 2\n"):
        for _ in range(20):
            s = socket.socket(socket.AF_UNIX)
            s.connect(sock_path)
            s.setblocking(False)
            try:
                s.send(payload)
            except BlockingIOError:
                pass
            clients.append(s)
    # A program waiting in TIOCMIWAIT is killed.
    waiting = interactive(f"""
        import fcntl, json, termios, serial
        s = serial.Serial({str(port)!r}, 9600)
        print(json.dumps({{"waiting": True}}))
        fcntl.ioctl(s.fileno(), termios.TIOCMIWAIT, termios.TIOCM_RNG)
    """)
    assert waiting.expect() == {"waiting": True}
    waiting.proc.send_signal(signal.SIGKILL)
    waiting.proc.wait(10)
    for s in clients:
        s.close()
    # The other port's program is still served at once.
    seen = run_wrapped(vcom, f"""
        import json, termios, serial
        s = serial.Serial({str(other)!r}, 19200, bytesize=7, parity="E")
        print(json.dumps({{"cflag_cs7": termios.tcgetattr(s.fileno())[2] & termios.CSIZE == termios.CS7}}))
    """)
    assert seen == {"cflag_cs7": True}
    assert "Traceback" not in vcom.log_tail(400)


def test_an_unwrapped_program_after_a_wrapped_one_gets_the_pty_view(vcom: Vcom, tmp_path):
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{share_echo(vcom)}")
    run_wrapped(vcom, f"""
        import json, serial
        serial.Serial({str(port)!r}, 19200, bytesize=7, parity="E").close()
        print(json.dumps({{}}))
    """)
    vcom.wait_status("sim:echo", lambda s: s["settings"]["data_bits"] == 7, what="7 bits at the device")
    # An unwrapped program changes the settings: from then on the port carries what the pty says.
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
    try:
        t = termios.tcgetattr(fd)
        t[4] = t[5] = termios.B57600
        termios.tcsetattr(fd, termios.TCSANOW, t)
        echo = vcom.wait_status("sim:echo", lambda s: s["settings"]["baud"] == 57600, what="57600 at the device")
        assert (echo["settings"]["data_bits"], echo["settings"]["parity"]) == (8, "none")
        assert vcom.status(port)["settings_exact"] is False
        # The log says what the other program changed.
        assert f"{port}: the termios a program set through the interposer was changed" in vcom.log_tail(400)
        assert "ospeed 19200 -> 57600" in vcom.log_tail(400)
    finally:
        os.close(fd)


def test_stty_sets_parity_under_wrap(vcom: Vcom, tmp_path):
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{share_echo(vcom)}")
    plain = subprocess.run(["stty", "-F", str(port), "cs7", "parenb", "parodd"], capture_output=True, text=True)
    assert plain.returncode != 0  # glibc: the pty did not keep it
    for mode in MODES:
        wrapped = subprocess.run(wrap_command(mode, "stty", "-F", str(port), "cs7", "parenb", "parodd"),
                                 env=vcom.env, capture_output=True, text=True, timeout=30)
        assert wrapped.returncode == 0, wrapped.stderr
        shown = subprocess.run(wrap_command(mode, "stty", "-F", str(port), "-a"), env=vcom.env,
                               capture_output=True, text=True, timeout=30)
        assert shown.returncode == 0, shown.stderr
        assert {"cs7", "parenb", "parodd"} <= set(shown.stdout.split()), shown.stdout
        echo = vcom.wait_status("sim:echo", lambda s: (s["settings"]["data_bits"], s["settings"]["parity"]) ==
                                (7, "odd"), what="7O at the device")
        assert echo["settings"]["data_bits"] == 7
        subprocess.run(["stty", "-F", str(port), "cs8", "-parenb"], capture_output=True)


def test_modbus_rtu_with_even_parity_through_vcom(vcom: Vcom, start_peer, tmp_path):
    """A pymodbus RTU client (8E1, Modbus's default framing) reads holding registers through vcom and
    ser2net from a pymodbus RTU server on the far UART."""
    with modbus_behind_ser2net(tmp_path, start_peer) as ser2net:
        port = tmp_path / "ttyV0"
        vcom.add(port, f"127.0.0.1:{ser2net.port}")
        seen = run_wrapped(vcom, f"""
            import json
            from pymodbus.client import ModbusSerialClient
            client = ModbusSerialClient({str(port)!r}, baudrate=19200, bytesize=8, parity="E", stopbits=1,
                                        timeout=2, retries=5)
            assert client.connect()
            reply = client.read_holding_registers(0, count=5, device_id={DEVICE_ID})
            print(json.dumps({{"registers": reply.registers}}))
            client.close()
        """)
        assert seen == {"registers": REGISTERS[:5]}


def test_wrap_reports_a_program_that_cannot_run(vcom: Vcom, tmp_path):
    result = subprocess.run([PYTHON, "-m", "vcom", "wrap", str(tmp_path / "no-such-program")], env=vcom.env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 127
    assert result.stderr.strip().startswith("vcom: cannot run ") and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("mode", MODES)
def test_a_wrapped_program_gets_default_signal_dispositions(vcom: Vcom, mode):
    """`yes | head -1` ends yes with SIGPIPE; a program must not inherit the launcher's ignored SIGPIPE."""
    result = subprocess.run(wrap_command(mode, "sh", "-c", "yes | head -1"), env=vcom.env, capture_output=True,
                            text=True, timeout=30)
    assert (result.returncode, result.stdout, result.stderr) == (0, "y\n", "")


def test_wrap_returns_the_exit_status_and_passes_signals_on(vcom: Vcom):
    assert subprocess.run([PYTHON, "-m", "vcom", "wrap", sys.executable, "-c", "raise SystemExit(3)"],
                          env=vcom.env, timeout=30).returncode == 3
    proc = subprocess.Popen([PYTHON, "-m", "vcom", "wrap", sys.executable, "-c", "import time; time.sleep(60)"],
                            env=vcom.env)
    try:
        # Wait until the program itself runs under the supervisor, then stop the supervisor politely.
        wait_until(lambda: any("time.sleep(60)" in _cmdline(pid) for pid in _children(proc.pid)), 15,
                   "the wrapped program")
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 128 + signal.SIGTERM
        assert time.monotonic() - start < 15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


STALLED_READER = """
import socket, sys, time
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", 0))
server.listen(1)
print(server.getsockname()[1], flush=True)
conn, _ = server.accept()
conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
time.sleep(float(sys.argv[1]))  # stalled: TCP holds the writer back
got = 0
with open(sys.argv[2], "w") as count:
    while chunk := conn.recv(65536):
        got += len(chunk)
        count.seek(0)
        count.write(f"{got:12d}")
        count.flush()
"""


@pytest.mark.parametrize("mode", MODES)
def test_drain_waits_until_the_server_has_received_everything(vcom: Vcom, tmp_path, mode):
    counter = tmp_path / "received"
    counter.write_text("0")
    reader = subprocess.Popen([PYTHON, "-c", STALLED_READER, "1.5", str(counter)], stdout=subprocess.PIPE, text=True)
    try:
        server_port = int(reader.stdout.readline())
        port = tmp_path / "ttyV0"
        vcom.add(port, f"tcp://127.0.0.1:{server_port}")
        seen = run_wrapped(vcom, f"""
            import fcntl, json, struct, termios, time, serial
            s = serial.Serial({str(port)!r}, 115200)
            data = bytes(range(256)) * 800  # 200 KiB: more than the pty and the sockets hold
            s.write(data)
            queued = struct.unpack("i", fcntl.ioctl(s.fileno(), termios.TIOCOUTQ, b"\\0" * 4))[0]
            s.flush()  # tcdrain
            received = int(open({str(counter)!r}).read() or 0)
            left = struct.unpack("i", fcntl.ioctl(s.fileno(), termios.TIOCOUTQ, b"\\0" * 4))[0]
            print(json.dumps({{"written": len(data), "queued": queued, "received": received, "left": left}}))
        """, mode)
        assert seen["received"] == seen["written"], seen  # drained means the server has it all
        assert seen["queued"] > 0 and seen["left"] == 0, seen
    finally:
        reader.kill()
        reader.wait(5)
