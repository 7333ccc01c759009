"""What a person sees: the human output of ``status``, ``list``, ``monitor``,
``status --watch`` (on a real terminal, under tmux), ``unshare`` and
``preload-path``, and the ownership ``vcom add`` gives the real pty.

The port reaches ``vcom share sim:echo`` in the same manager, so every line of
output has a known value to show.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from peers import Vcom, bound_addresses, read_exact, stty, wait_until, write_all

IS_ROOT = os.geteuid() == 0


@pytest.fixture
def echo_port(vcom: Vcom, open_port, tmp_path: Path) -> tuple[Path, int, int]:
    """A port on sim:echo, open by a program at 19200 baud, with 5 bytes echoed: (path, program fd, share port)."""
    listen = vcom.share("sim:echo")
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{listen}")
    fd = open_port(port)
    stty(port, "19200")
    write_all(fd, b"hello")
    assert read_exact(fd, 5) == b"hello"
    vcom.wait_status(port, lambda s: s["remote_settings"]["baud"] == 19200 and s["signals"]["dcd"] is True,
                     what="19200 acknowledged and the echo plug's lines up")
    return port, fd, listen


def test_status_for_people(vcom: Vcom, echo_port: tuple[Path, int, int]):
    port, _, listen = echo_port
    lines = vcom.ok("status", str(port)).stdout.splitlines()
    assert lines[0] == f"{port}  connected  open  -> rfc2217://127.0.0.1:{listen}"
    assert lines[1] == "  program: 19200 8N1   remote: 19200 8N1   server: vcom sim:echo"
    assert lines[2] == "  bytes to remote 5, from remote 5, dropped 0, connects 1, reconnects after a loss 0"
    assert lines[3] == "  lines: DTR+ RTS+ CTS+ DSR+ DCD+ RI-"
    assert lines[4] == "  interposer: none   settings: data bits and parity as the pty forces them"
    assert len(lines) == 5

    everything = vcom.ok("status").stdout.splitlines()
    assert everything[:5] == lines
    assert everything[5] == f"share sim:echo  open  rfc2217 on 127.0.0.1:{listen}"
    assert everything[6] == "  device: 19200 8N1   clients: 1"
    assert re.fullmatch(r"  client 127\.0\.0\.1:\d+: in 5, out 5, dropped 0", everything[7]), everything[7]


def test_list_for_people(vcom: Vcom, refused_port: int, tmp_path: Path):
    vcom.add(tmp_path / "ttyA", f"127.0.0.1:{refused_port}", "--baud", "4800", "--connect", "always")
    vcom.add(tmp_path / "ttyB", f"127.0.0.1:{refused_port}", "--split-of", str(tmp_path / "ttyA"))
    gps = vcom.share("sim:gps", "--protocol", "tcp")
    assert vcom.ok("list").stdout.splitlines() == [
        f"{tmp_path / 'ttyA'}  rfc2217://127.0.0.1:{refused_port}  baud=4800 connect=always",
        f"{tmp_path / 'ttyB'}  rfc2217://127.0.0.1:{refused_port}  baud=9600 connect=on-open "
        f"split-of={tmp_path / 'ttyA'}",
        f"share sim:gps  tcp on 127.0.0.1:{gps}",  # port 0 was kept as the port the kernel picked
        f"config {vcom.home / 'vcom.toml'}; manager running (pid {vcom.manager_pid()})",
    ]


def test_monitor_for_people(vcom: Vcom, echo_port: tuple[Path, int, int], tmp_path: Path):
    port, fd, listen = echo_port
    record = tmp_path / "monitor.txt"
    monitor = subprocess.Popen([sys.executable, "-m", "vcom", "monitor", str(port), "--output", str(record)],
                               env=vcom.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        wait_until(lambda: record.exists() and "monitoring" in record.read_text(), 10, "the monitor started")
        write_all(fd, b"Hi\x00\xff")
        assert read_exact(fd, 4) == b"Hi\x00\xff"
        stty(port, "9600")
        wait_until(lambda: "settings 9600" in record.read_text(), 10, "the settings change in the monitor")
    finally:
        monitor.send_signal(signal.SIGINT)
        _, err = monitor.communicate(timeout=10)
    assert monitor.returncode == 0 and not err, err
    stamp = r"\d\d:\d\d:\d\d\.\d{6}"
    lines = record.read_text().splitlines()
    assert re.fullmatch(rf"{stamp}  \* monitoring {port} -> rfc2217://127\.0\.0\.1:{listen} \(connected\)",
                        lines[0]), lines[0]
    row = "48 69 00 ff".ljust(47) + "  Hi.."  # hex in a 16-byte-wide column, then the printable text
    sent = [line for line in lines if re.fullmatch(rf"{stamp}  > {re.escape(row)}", line)]
    echoed = [line for line in lines if re.fullmatch(rf"{stamp}  < {re.escape(row)}", line)]
    assert len(sent) == 1 and len(echoed) == 1, lines
    assert lines.index(sent[0]) < lines.index(echoed[0])
    assert any(re.fullmatch(rf"{stamp}  \* settings 9600 8N1", line) for line in lines), lines


def _tmux(socket_path: Path, *args: str) -> str:
    return subprocess.run(["tmux", "-S", str(socket_path), *args], check=True, capture_output=True, text=True,
                          timeout=10).stdout


def test_status_watch_on_a_terminal(vcom: Vcom, echo_port: tuple[Path, int, int], tmp_path: Path):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    port, _, listen = echo_port
    server = tmp_path / "tmux.sock"
    # The terminal's own size must rule, not a COLUMNS/LINES inherited from the test run.
    command = (f"unset COLUMNS LINES; VCOM_HOME={vcom.home} {sys.executable} -m vcom status --watch --interval 0.2; "
               "echo WATCH-ENDED $?; sleep 60")
    _tmux(server, "-f", "/dev/null", "new-session", "-d", "-s", "watch", "-x", "150", "-y", "30", command)
    try:
        def screen() -> str:
            return _tmux(server, "capture-pane", "-p", "-t", "watch")

        def shows(*texts: str) -> str | None:
            text = screen()
            return text if all(t in text for t in texts) else None

        text = wait_until(lambda: shows(f"127.0.0.1:{listen}", "sort: device"), 15, "the live view on the terminal")
        header = text.splitlines()[0]
        assert "ports 1  connected 1  open 1" in header and "shares 1" in header, text
        # The port's row (a long device path is shortened to fit its column).
        rows = [line for line in text.splitlines() if "connected" in line and "19200" in line]
        assert len(rows) == 1, text
        row = rows[0]
        assert str(port).startswith(row.split()[0].rstrip("…")), row
        assert "connected" in row and "19200 8N1" in row and " ●   ●   ●   ●   ●   ○ " in row, text
        assert re.search(rf"^sim:echo\s+open\s+rfc2217\s+127\.0\.0\.1:{listen}\s+1\s", text, re.M), text
        _tmux(server, "send-keys", "-t", "watch", "s")
        wait_until(lambda: shows("sort: state"), 10, "the sort key to change")
        _tmux(server, "send-keys", "-t", "watch", "q")
        text = wait_until(lambda: shows("WATCH-ENDED"), 10, "the view to end on q")
        assert "WATCH-ENDED 0" in text and "Traceback" not in text
    finally:
        subprocess.run(["tmux", "-S", str(server), "kill-server"], capture_output=True, timeout=10)


def test_unshare_stops_the_listener(vcom: Vcom):
    listen = vcom.share("sim:echo")
    manager = vcom.manager_pid()
    assert ("127.0.0.1", listen) in bound_addresses(manager)
    result = vcom.ok("unshare", "sim:echo")
    assert result.stdout == "" and result.stderr == ""
    assert ("127.0.0.1", listen) not in bound_addresses(manager)
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", listen), timeout=5):
        pass
    gone = vcom.cli("status", "sim:echo")
    assert gone.returncode == 1 and gone.stderr == "vcom: sim:echo is not a vcom port or share\n"
    again = vcom.cli("unshare", "sim:echo")
    assert again.returncode == 1 and again.stderr == "vcom: sim:echo is not shared\n"
    assert "sim:echo" not in (vcom.home / "vcom.toml").read_text()


def test_preload_path_names_a_library_and_the_socket(vcom: Vcom):
    result = vcom.ok("preload-path")
    preload, socket_line = result.stdout.splitlines()
    assert socket_line == f"VCOM_INTERPOSER={vcom.home / 'interposer.sock'}"
    library = Path(preload.removeprefix("LD_PRELOAD="))
    assert preload.startswith("LD_PRELOAD=") and library.is_absolute()
    assert library.read_bytes()[:4] == b"\x7fELF"  # a shared object the loader can take
    # Usable as printed: a program started with it runs, and the library is mapped into it.
    maps = subprocess.run(["cat", "/proc/self/maps"], env={**os.environ, "LD_PRELOAD": str(library)},
                          capture_output=True, text=True, timeout=10)
    assert maps.returncode == 0 and str(library) in maps.stdout


@pytest.mark.skipif(not IS_ROOT, reason="giving a pty to another user needs root")
def test_owner_group_and_mode_on_the_real_pty(vcom: Vcom, refused_port: int, tmp_path: Path):
    custom, default = tmp_path / "ttyCustom", tmp_path / "ttyDefault"
    vcom.add(custom, f"127.0.0.1:{refused_port}", "--owner", "nobody", "--group", "nogroup", "--mode", "0640")
    vcom.add(default, f"127.0.0.1:{refused_port}")
    seen = os.stat(custom)  # follows the symlink to /dev/pts/N
    assert os.path.realpath(custom).startswith("/dev/pts/")
    assert (seen.st_uid, seen.st_gid) == (pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid)
    assert stat.S_IMODE(seen.st_mode) == 0o640
    seen = os.stat(default)  # as root: root:dialout 0660
    assert (seen.st_uid, seen.st_gid, stat.S_IMODE(seen.st_mode)) == (0, grp.getgrnam("dialout").gr_gid, 0o660)
    # The same after the manager restarts and makes new ptys from the config.
    vcom.ok("shutdown")
    vcom.start_manager()
    assert os.path.exists(custom)  # ready only once every configured port exists
    seen = os.stat(custom)
    assert (seen.st_uid, stat.S_IMODE(seen.st_mode)) == (pwd.getpwnam("nobody").pw_uid, 0o640)
