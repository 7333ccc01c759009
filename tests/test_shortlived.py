"""Programs that live for microseconds: nothing they write is lost or delayed.

`printf 'AT\\r' > /dev/ttyV0` opens, writes and closes before the manager
has looked; `stty -F` opens, sets and closes.  On a UART the kernel drains
what was written before the close.  These tests run hundreds of such
programs in a row against vcom's own server and against ser2net, with the
far UART a pty the test reads, and check every byte in order, the settings,
and where the wire can tell, the order of settings, data and DTR.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from peers import (
    COM_PORT_OPTION,
    PYTHON,
    SET_BAUDRATE,
    SET_CONTROL,
    Data,
    PtyDevice,
    Ser2net,
    Subnegotiation,
    Vcom,
    WireProxy,
    data_and_commands,
    refusing_port,
    wait_settings,
    wait_until,
)

RUNS = 150


def remote(kind: str, vcom: Vcom, device: PtyDevice, start_peer, tmp_path) -> int:
    """An RFC 2217 server whose UART is ``device``: vcom's own share, or ser2net."""
    if kind == "ser2net":
        if shutil.which("ser2net") is None:
            pytest.skip("ser2net is not installed")
        return start_peer(Ser2net(tmp_path / "ser2net", device.path)).port
    return vcom.share(device.path)


@contextlib.contextmanager
def frozen(vcom: Vcom) -> Iterator[None]:
    """SIGSTOP the manager for the duration (SIGCONT whatever happens)."""
    pid = int((vcom.home / "vcom.pid").read_text().split()[0])
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def shell(script: str, timeout: float = 120) -> None:
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("connect", ["always", "on-open"])
@pytest.mark.parametrize("server", ["share", "ser2net"])
def test_hundreds_of_short_lived_writers_all_arrive_in_order(vcom: Vcom, device, start_peer, tmp_path, server,
                                                              connect):
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{remote(server, vcom, device, start_peer, tmp_path)}", "--connect", connect)
    if connect == "always":
        vcom.wait_status(port, lambda s: s["state"] == "connected", what="connected")
    shell(f'i=0; while [ $i -lt {RUNS} ]; do printf "AT$i\\r" > {port}; i=$((i+1)); done')
    expected = "".join(f"AT{i}\r" for i in range(RUNS)).encode()
    assert device.read_exact(len(expected), timeout=30) == expected
    status = vcom.wait_status(port, lambda s: not s["open"], what="the last session closed")
    assert status["bytes_to_remote"] == len(expected)
    assert status["lost_bytes"] == 0


@pytest.mark.parametrize("connect", ["always", "on-open"])
@pytest.mark.parametrize("server", ["share", "ser2net"])
def test_a_lone_short_lived_writer_is_sent_at_once(vcom: Vcom, device, start_peer, tmp_path, server, connect):
    """Each writer alone, with no later program to wake the port: its bytes still arrive, each before the
    next writer starts."""
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{remote(server, vcom, device, start_peer, tmp_path)}", "--connect", connect)
    for i in range(40):
        with frozen(vcom) if i % 2 else contextlib.nullcontext():
            shell(f'printf "AT{i}\\r" > {port}')
        assert device.read_exact(len(f"AT{i}\r"), timeout=15) == f"AT{i}\r".encode()


@pytest.mark.parametrize("server", ["share", "ser2net"])
def test_stty_from_a_program_that_is_gone_is_applied(vcom: Vcom, device, start_peer, tmp_path, server):
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{remote(server, vcom, device, start_peer, tmp_path)}", "--connect", "always")
    vcom.wait_status(port, lambda s: s["state"] == "connected", what="connected")
    # The device keeps its settings only while a client is connected (servers restore them at the end),
    # so the port stays connected; every stty run is a program that is gone before vcom looks.
    for n, (speed, stop) in enumerate([(19200, True), (38400, False), (4800, True), (57600, False)] * 5):
        with frozen(vcom) if n % 2 else contextlib.nullcontext():
            shell(f"stty -F {port} {speed} {'cstopb' if stop else '-cstopb'}")
        wait_settings(device, ispeed=speed, cstopb=stop)
    # Then hundreds in a row, each gone before the next starts: the device ends with the last one's.
    shell(f"i=0; while [ $i -lt {RUNS} ]; do stty -F {port} 19200 -cstopb; stty -F {port} 38400 cstopb; "
          f"i=$((i+1)); done; stty -F {port} 57600 -cstopb")
    wait_settings(device, ispeed=57600, cstopb=False)


def test_each_byte_leaves_under_the_settings_it_was_written_with(vcom: Vcom, start_peer, tmp_path):
    """Under `vcom wrap` (the shell and every stty it starts), settings and data alternate on the wire
    exactly as the programs made them, however short their lives."""
    echo = vcom.share("sim:echo")
    proxy = start_peer(WireProxy(tmp_path / "proxy", echo))
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{proxy.port}")
    rounds = 25
    result = subprocess.run([PYTHON, "-m", "vcom", "wrap", "sh", "-c", textwrap.dedent(f"""
        exec 3<>{port}
        i=0
        while [ $i -lt {rounds} ]; do
            stty -F {port} 19200; printf "a$i." > {port}
            stty -F {port} 38400; printf "b$i." > {port}
            i=$((i+1))
        done
    """)], env=vcom.env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    wanted = b"".join(f"a{i}.b{i}.".encode() for i in range(rounds))

    def sequence() -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        for item in proxy.client_items():
            if isinstance(item, Data):
                if out and out[-1][0] == "data":
                    out[-1] = ("data", out[-1][1] + item.data)
                else:
                    out.append(("data", item.data))
            elif (isinstance(item, Subnegotiation) and item.option == COM_PORT_OPTION
                  and item.command == SET_BAUDRATE):
                out.append(("baud", item.number))
        return out

    wait_until(lambda: b"".join(v for k, v in sequence() if k == "data") == wanted, 30, "all data on the wire")
    baud = None
    for kind, value in sequence():
        if kind == "baud":
            baud = value
            continue
        for piece in value.split(b".")[:-1]:
            assert (piece[:1], baud) in ((b"a", 19200), (b"b", 38400)), sequence()


def test_dtr_drops_after_the_last_byte_of_a_short_lived_writer(vcom: Vcom, start_peer, tmp_path):
    echo = vcom.share("sim:echo")
    proxy = start_peer(WireProxy(tmp_path / "proxy", echo))
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{proxy.port}", "--connect", "always")
    vcom.wait_status(port, lambda s: s["state"] == "connected", what="connected")
    # The manager is frozen while the program lives: it learns of the open, the close and the bytes all at
    # once, as when a loaded machine is slower than the program.
    with frozen(vcom):
        shell(f"printf 'last words' > {port}")

    def events() -> list[object]:
        return [item if isinstance(item, bytes) else item.value[0]
                for item in data_and_commands(proxy.client_items(), SET_CONTROL)]

    wait_until(lambda: 9 in events()[events().index(8):] if 8 in events() else False, 15, "DTR down after up")
    seen = events()
    up = seen.index(8)  # DTR raised at the open
    data = b"".join(e for e in seen if isinstance(e, bytes))
    assert data == b"last words"
    last_byte = max(i for i, e in enumerate(seen) if isinstance(e, bytes))
    assert up < last_byte < seen.index(9, up), seen  # HUPCL drops DTR only after the program's last byte


def test_a_writer_killed_right_after_its_write_is_delivered(vcom: Vcom, device, start_peer, tmp_path):
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{remote('share', vcom, device, start_peer, tmp_path)}")
    for n in range(20):
        # The program writes and is killed at once: the kernel closes its fd, vcom still sends its bytes.
        subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            import os, signal
            fd = os.open({str(port)!r}, os.O_WRONLY | os.O_NOCTTY)
            os.write(fd, b"<{n}>")
            os.kill(os.getpid(), signal.SIGKILL)
        """)], timeout=30)
    expected = b"".join(f"<{n}>".encode() for n in range(20))
    assert device.read_exact(len(expected), timeout=30) == expected


def test_bytes_written_while_the_server_is_down_leave_once_it_is_up(vcom: Vcom, device, tmp_path):
    port = tmp_path / "ttyV0"
    with refusing_port() as server_port:  # held, so that nobody else takes it while the server is down
        vcom.add(port, f"127.0.0.1:{server_port}", "--retry-max", "0.5")
        shell(f"printf 'queued while down' > {port}")
        vcom.wait_status(port, lambda s: s["state"] == "backoff", what="the connection refused")
        assert device.drain() == b""
    vcom.ok("share", device.path, "--listen", f"127.0.0.1:{server_port}")
    assert device.read_exact(len(b"queued while down"), timeout=30) == b"queued while down"
    status = vcom.wait_status(port, lambda s: not s["open"], what="the session closed")
    assert status["lost_bytes"] == 0
    # The on-open linger then ends the connection, as for any program.
    vcom.wait_status(port, lambda s: s["state"] == "idle", what="idle after the linger")


def test_stdin_redirection_of_a_long_shell_loop_keeps_one_session(vcom: Vcom, device, start_peer, tmp_path):
    """A shell that holds the port open (exec 3>) while its children write: one session, in order."""
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{remote('share', vcom, device, start_peer, tmp_path)}")
    shell(f'exec 3>{port}; i=0; while [ $i -lt 50 ]; do printf "<$i>" >&3; printf "[$i]" > {port}; '
          f'i=$((i+1)); done')
    expected = b"".join(f"<{i}>[{i}]".encode() for i in range(50))
    assert device.read_exact(len(expected), timeout=30) == expected
    assert os.path.islink(port)
