"""`vcom wrap-all`: the interposer for every dynamically linked program, with no `vcom wrap`.

Everything runs in a mount namespace with a private overlay of /etc
(tests/private_etc.py), so /etc/ld.so.preload is written for real, by the
real code, and the machine's own file is never touched.  The library goes to
a temporary VCOM_LIBDIR.  Programs here are started as a systemd unit or a
vendor tool would start them: plainly, without `vcom wrap`.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from modbus_peer import DEVICE_ID, REGISTERS, modbus_behind_ser2net
from peers import (
    COM_PORT_OPTION,
    PYTHON,
    SET_PARITY,
    Subnegotiation,
    Vcom,
    WireProxy,
    wait_until,
)

HERE = Path(__file__).resolve().parent
LIBM = next((p for p in ("/lib/x86_64-linux-gnu/libm.so.6", "/lib/aarch64-linux-gnu/libm.so.6",
                         "/usr/lib64/libm.so.6", "/lib64/libm.so.6") if os.path.exists(p)), None)


class PrivateEtc:
    """Runs commands with a private /etc (an overlay kept in ``root``) and the test's vcom environment."""

    def __init__(self, root: Path, vcom: Vcom) -> None:
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            pytest.skip("needs root and unshare for a private /etc")
        self.upper, self.work = root / "upper", root / "work"
        self.upper.mkdir(parents=True)
        self.work.mkdir()
        self.libdir = root / "lib"
        self.env = {**vcom.env, "VCOM_LIBDIR": str(self.libdir),
                    "VCOM_INTERPOSER": str(vcom.home / "interposer.sock")}

    def run(self, *command: str, timeout: float = 60, check: bool = True,
            stdin: int | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["unshare", "-m", "--propagation", "private", PYTHON, str(HERE / "private_etc.py"),
                                 str(self.upper), str(self.work), "--", *command],
                                env=self.env, capture_output=True, text=True, timeout=timeout, stdin=stdin)
        if check:
            assert result.returncode == 0, f"{command}: {result.stderr}"
        return result

    def vcom(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(PYTHON, "-m", "vcom", *args)

    def preload_file(self) -> str | None:
        result = self.run("cat", "/etc/ld.so.preload", check=False)
        return result.stdout if result.returncode == 0 else None

    @property
    def library(self) -> str:
        return str(self.libdir / "libvcom-interposer.so")


@pytest.fixture
def etc(tmp_path, vcom) -> PrivateEtc:
    return PrivateEtc(tmp_path / "etc", vcom)


def share_echo(vcom: Vcom) -> int:
    return vcom.share("sim:echo")


def test_on_off_keep_the_other_entries_and_repeat_safely(etc: PrivateEtc):
    if LIBM is None:
        pytest.skip("no libm to stand for another preloaded library")
    assert etc.preload_file() is None
    etc.run("sh", "-c", f"printf '{LIBM}\\n' > /etc/ld.so.preload")
    assert "off" in etc.vcom("wrap-all", "status").stdout
    for _ in range(2):  # idempotent
        assert etc.vcom("wrap-all", "on").stdout.startswith("on ")
        assert etc.preload_file() == f"{LIBM}\n{etc.library}\n"
    assert etc.vcom("wrap-all", "status").stdout.startswith("on ")
    for _ in range(2):
        assert etc.vcom("wrap-all", "off").stdout.startswith("off ")
        assert etc.preload_file() == f"{LIBM}\n"
    # With nothing else listed, off removes the file it made.
    etc.run("rm", "/etc/ld.so.preload")
    etc.vcom("wrap-all", "on")
    assert etc.preload_file() == f"{etc.library}\n"
    etc.vcom("wrap-all", "off")
    assert etc.preload_file() is None
    assert not Path("/etc/ld.so.preload").exists() or etc.library not in Path("/etc/ld.so.preload").read_text()


def test_wrap_all_needs_root(vcom: Vcom, tmp_path):
    """Run the command as an unprivileged user: a one-line refusal, nothing written."""
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    env = {**vcom.env, "VCOM_LIBDIR": str(tmp_path / "lib")}
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child drops to nobody and runs the command's code, as `vcom wrap-all on` would
        try:
            os.close(read)
            os.environ.update(env)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            from vcom.interposer import wrapall

            try:
                wrapall.enable(tmp_path / "cache")
                message = "enabled"
            except wrapall.WrapAllError as exc:
                message = str(exc)
            os.write(write, message.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        message = pipe.read()
    os.waitpid(pid, 0)
    assert message == "wrap-all on: only root can change /etc/ld.so.preload"
    assert not (tmp_path / "lib").exists()


def test_unwrapped_programs_get_a_uart(etc: PrivateEtc, vcom: Vcom, tmp_path):
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{share_echo(vcom)}")
    before = etc.run(PYTHON, "-c", textwrap.dedent(f"""
        import serial
        for _ in range(2):  # glibc reports it once the speed stays the same
            serial.Serial({str(port)!r}, 19200, bytesize=7, parity="E").close()
    """), check=False)
    assert before.returncode != 0 and "Invalid argument" in before.stderr  # what a pty gives
    etc.vcom("wrap-all", "on")
    result = etc.run(PYTHON, "-c", textwrap.dedent(f"""
        import json, termios, serial
        s = serial.Serial({str(port)!r}, 19200, bytesize=7, parity="E")
        cflag = termios.tcgetattr(s.fileno())[2]
        print(json.dumps({{"cs7": cflag & termios.CSIZE == termios.CS7, "parenb": bool(cflag & termios.PARENB)}}))
    """))
    assert json.loads(result.stdout) == {"cs7": True, "parenb": True}
    assert result.stderr == ""
    echo = vcom.wait_status("sim:echo", lambda s: s["settings"]["data_bits"] == 7, what="7E1 at the device")
    assert echo["settings"]["parity"] == "even"
    etc.run("stty", "-F", str(port), "cs7", "parodd", "parenb")
    vcom.wait_status("sim:echo", lambda s: s["settings"]["parity"] == "odd", what="stty's parity at the device")


def test_picocom_break_and_dtr_reach_the_remote(etc: PrivateEtc, vcom: Vcom, tmp_path):
    if shutil.which("picocom") is None:
        pytest.skip("picocom is not installed")
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{share_echo(vcom)}")
    etc.vcom("wrap-all", "on")
    # picocom in a terminal of its own: C-a C-\\ sends a break, C-a C-t toggles DTR, C-a C-x quits.
    master, slave = os.openpty()
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", PYTHON, str(HERE / "private_etc.py"),
                             str(etc.upper), str(etc.work), "--", "picocom", "-b", "9600", str(port)],
                            env=etc.env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    screen = bytearray()

    def shown(text: bytes) -> bool:
        while True:
            try:
                import select

                if not select.select([master], [], [], 0.05)[0]:
                    break
                screen.extend(os.read(master, 4096))
            except OSError:
                break
        return text in screen

    try:
        wait_until(lambda: shown(b"Terminal ready"), 15, "picocom's terminal")
        vcom.wait_status(port, lambda s: s["signals"]["dtr"] is True, what="DTR up at the open")
        os.write(master, b"\x01\x1c")
        wait_until(lambda: shown(b"break sent"), 10, "picocom's break")
        vcom.wait_status("sim:echo", lambda s: s["device_stats"]["breaks"] >= 1, what="the break at the device")
        os.write(master, b"\x01\x14")
        wait_until(lambda: shown(b"DTR: down"), 10, "picocom's DTR toggle")
        vcom.wait_status(port, lambda s: s["signals"]["dtr"] is False, what="DTR down at the remote")
        vcom.wait_status("sim:echo", lambda s: s["signals"]["dsr"] is False, what="DSR down at the loop-back")
        status = vcom.status(port)
        assert status["interposed"] == ["preload"]
        os.write(master, b"\x01\x18")
        proc.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(master)


def test_mbpoll_with_even_parity(etc: PrivateEtc, vcom: Vcom, start_peer, tmp_path):
    if shutil.which("mbpoll") is None:
        pytest.skip("mbpoll is not installed")
    with modbus_behind_ser2net(tmp_path, start_peer) as ser2net:
        proxy = start_peer(WireProxy(tmp_path / "proxy", ser2net.port))
        port = tmp_path / "ttyV0"
        vcom.add(port, f"127.0.0.1:{proxy.port}")
        etc.vcom("wrap-all", "on")
        result = etc.run("mbpoll", "-m", "rtu", "-b", "19200", "-P", "even", "-a", str(DEVICE_ID), "-r", "1",
                         "-c", "3", "-o", "2", "-1", str(port), check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        for number, value in enumerate(REGISTERS[:3], 1):
            assert f"[{number}]: \t{value}" in result.stdout, result.stdout
        parities = [item.value[0] for item in proxy.client_items()
                    if isinstance(item, Subnegotiation) and item.option == COM_PORT_OPTION
                    and item.command == SET_PARITY and item.value]
        assert 3 in parities, parities  # SET-PARITY 3: even


def test_other_programs_are_untouched(etc: PrivateEtc, vcom: Vcom, tmp_path):
    vcom.add(tmp_path / "ttyV0", f"127.0.0.1:{share_echo(vcom)}")
    probe = textwrap.dedent("""
        import errno, fcntl, json, os, struct, termios
        master, slave = os.openpty()   # a pty that is not a vcom port
        out = {}
        try:
            fcntl.ioctl(slave, termios.TIOCMGET, struct.pack("I", 0))
            out["tiocmget"] = "answered"
        except OSError as exc:
            out["tiocmget"] = errno.errorcode[exc.errno]
        t = termios.tcgetattr(slave)
        t[2] = (t[2] & ~termios.CSIZE) | termios.CS7 | termios.PARENB
        try:
            termios.tcsetattr(slave, termios.TCSANOW, t)
            out["cs7"] = "accepted"
        except termios.error as exc:
            out["cs7"] = errno.errorcode[exc.args[0]]
        out["cflag"] = termios.tcgetattr(slave)[2]
        print(json.dumps(out))
    """)
    commands = [("true",), ("ls", "/"), ("sh", "-c", "echo hello; stty -a < /dev/null; exit 0"), (PYTHON, "-c", probe)]
    without = [etc.run(*command, check=False) for command in commands]
    etc.vcom("wrap-all", "on")
    with_it = [etc.run(*command, check=False) for command in commands]
    for command, a, b in zip(commands, without, with_it, strict=True):
        assert (b.returncode, b.stdout, b.stderr) == (a.returncode, a.stdout, a.stderr), command


def test_calls_on_another_tty_cost_one_check_and_never_reach_the_manager(etc: PrivateEtc, tmp_path):
    """The library adds nothing to a tcgetattr on a tty that is not a vcom port (the tag is in what the call
    returns) and one TCGETS2 to a TIOCMGET; it never opens a socket for such a tty.  Counted with strace;
    the time it costs is a row of `make bench`."""
    if shutil.which("gcc") is None or shutil.which("strace") is None:
        pytest.skip("gcc and strace are needed")
    calls = 20000
    source = tmp_path / "calls.c"
    source.write_text(textwrap.dedent(f"""
        #include <pty.h>
        #include <stdio.h>
        #include <sys/ioctl.h>
        #include <termios.h>
        int main(void) {{
            int master, slave;
            if (openpty(&master, &slave, NULL, NULL, NULL) != 0) return 1;
            struct termios t;
            int lines;
            for (int i = 0; i < {calls}; i++) {{
                tcgetattr(slave, &t);
                ioctl(slave, TIOCMGET, &lines);
            }}
            printf("done\\n");
            return 0;
        }}
    """))
    binary = tmp_path / "calls"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(source), "-lutil"], check=True, capture_output=True)
    etc.vcom("wrap-all", "on")

    def counts() -> dict[str, int]:
        trace = tmp_path / "trace"
        result = etc.run("strace", "-c", "-o", str(trace), str(binary), timeout=300)
        assert result.stdout == "done\n"
        out = {}
        for line in trace.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[-1].isidentifier() and parts[3].isdigit():
                out[parts[-1]] = int(parts[3])
        return out

    seen = counts()
    assert "socket" not in seen and "connect" not in seen, seen
    # tcgetattr: its own TCGETS; TIOCMGET: one TCGETS2 to look for the tag, then the call itself.
    assert 3 * calls <= seen["ioctl"] <= 3 * calls + 50, seen
    etc.vcom("wrap-all", "off")
    assert 2 * calls <= counts()["ioctl"] <= 2 * calls + 50
