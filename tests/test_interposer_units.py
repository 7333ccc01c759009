"""The interposer's parts without a program: protocol lines, the emulated view, modem counting, the BPF filter."""

from __future__ import annotations

import asyncio
import platform
import struct
import termios

import pytest

from vcom.interposer import protocol, seccomp
from vcom.interposer.protocol import ProtocolError
from vcom.interposer.view import ModemCounter, ProgramView
from vcom.settings import Signals
from vcom.termio import BOTHER, EXTPROC, TAG, TCGETS2, TCSETS2, Termios2, fresh_uart_termios, with_speed

# -- protocol


def test_header_and_requests_parse():
    assert protocol.parse_header(b"vcom1 seccomp 42\n") == protocol.Header("seccomp", 42)
    assert protocol.parse_request(b"modem 34817 bis 6\n") == protocol.Request("modem", 34817, ("bis", "6"))
    assert protocol.parse_request(b"tcgets 1\n").args == ()
    assert protocol.parse_request(protocol.request("break", 5, "pulse", 250)) == protocol.Request(
        "break", 5, ("pulse", "250"))


@pytest.mark.parametrize("line", [
    b"vcom2 preload 1\n", b"vcom1 other 1\n", b"vcom1 preload -1\n", b"vcom1 preload\n", b"",
])
def test_bad_headers_are_refused(line):
    with pytest.raises(ProtocolError):
        protocol.parse_header(line)


@pytest.mark.parametrize("line", [
    b"tcgets\n", b"tcgets 1 extra\n", b"nosuch 1\n", b"modem 1 get\n", b"modem x get 0\n", b"miwait 1\n",
    b"tcsets 1 now " + b"00" * 200 + b"\n", "tcgets \u00e9\n".encode(), b"\xff\xfe\n", b"modem 1 get 0 0\n",
    b"break 1\n", b"icount 99999999999999999999999 \n",
])
def test_bad_requests_are_refused(line):
    with pytest.raises(ProtocolError):
        protocol.parse_request(line)


def test_answers():
    assert protocol.parse_answer(protocol.ok(1, "ab")) == protocol.Answer("ok", ("1", "ab"))
    assert protocol.parse_answer(protocol.NO).status == "no"
    assert protocol.parse_answer(protocol.err(25)).errno == 25
    for bad in (b"maybe\n", b"err\n", b"err x\n", b""):
        with pytest.raises(ProtocolError):
            protocol.parse_answer(bad)


# -- the emulated view


def _cs7_even(t: Termios2) -> Termios2:
    return Termios2(t.iflag, t.oflag, (t.cflag & ~termios.CSIZE) | termios.CS7 | termios.PARENB, t.lflag & ~EXTPROC,
                    t.line, t.cc, t.ispeed, t.ospeed)


def _pty_kept(asked: Termios2) -> Termios2:
    """What the pty driver keeps of ``asked``, with EXTPROC and the tag as vcom keeps them."""
    cflag = (asked.cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8 | termios.CREAD
    return Termios2(asked.iflag, asked.oflag, cflag, asked.lflag | EXTPROC, asked.line, asked.cc, asked.ispeed,
                    asked.ospeed).with_tag()


def test_the_program_reads_back_what_it_set_and_the_wire_gets_it():
    asked = _cs7_even(with_speed(fresh_uart_termios(), 19200))
    applied = _pty_kept(asked)
    view = ProgramView()
    view.record(asked, applied)
    assert view.for_program(applied) == asked
    wire = view.for_wire(applied)
    assert wire.cflag & termios.CSIZE == termios.CS7 and wire.cflag & termios.PARENB
    assert view.valid(applied)


def test_a_change_by_a_program_that_is_not_interposed_ends_the_view():
    asked = _cs7_even(fresh_uart_termios())
    applied = _pty_kept(asked)
    view = ProgramView()
    view.record(asked, applied)
    changed = with_speed(applied, 57600)
    assert view.for_wire(changed) == changed  # the pty's own view: 8 bits, no parity
    assert not view.valid(applied)  # and it stays ended
    shown = view.for_program(changed)
    assert bytes(shown.cc[i] for i in (17, 18)) == b"\0\0" and not shown.lflag & EXTPROC


def test_the_remembered_answer_follows_every_change_of_what_it_was_made_from():
    """for_program keeps its last answer while the pty's termios (one instance per value: Termios2.unpack)
    and the view stay the same objects; any change of either is answered afresh."""
    asked = _cs7_even(with_speed(fresh_uart_termios(), 19200))
    applied = Termios2.unpack(_pty_kept(asked).pack())
    assert Termios2.unpack(applied.pack()) is applied  # the same value read again: the same instance
    view = ProgramView()
    before = view.for_program(applied)  # not set through us yet: the pty's view
    assert before.cflag & termios.CSIZE == termios.CS8 and view.for_program(applied) is before
    view.record(asked, applied)
    assert view.for_program(applied) == asked  # recorded since: not the answer kept from before
    again = _cs7_even(with_speed(fresh_uart_termios(), 9600))
    view.record(again, Termios2.unpack(_pty_kept(again).pack()))
    assert view.for_program(view.applied) == again
    other = Termios2.unpack(with_speed(view.applied, 57600).pack())  # changed by a program not interposed
    shown = view.for_program(other)
    assert shown.ospeed == 57600 and shown.cflag & termios.CSIZE == termios.CS8 and view.requested is None
    view.forget()
    assert view.for_program(other) == shown


def test_without_an_interposed_set_the_program_sees_the_pty_without_vcom_marks():
    current = fresh_uart_termios().with_tag()
    current = Termios2(current.iflag, current.oflag, current.cflag, current.lflag | EXTPROC, current.line,
                       current.cc, current.ispeed, current.ospeed)
    shown = ProgramView().for_program(current)
    assert not shown.tagged and not shown.lflag & EXTPROC and shown.cflag == current.cflag


def test_old_termios_with_bother_keeps_the_rate_in_force():
    current = with_speed(fresh_uart_termios(), 250000)
    assert current.cflag & termios.CBAUD == BOTHER
    raw = current.pack_termios()
    assert Termios2.unpack_termios(raw, current).ospeed == 250000
    standard = with_speed(current, 4800)
    assert Termios2.unpack_termios(standard.pack_termios(), current).ospeed == 4800


def test_the_tag():
    t = fresh_uart_termios()
    assert not t.tagged
    assert t.with_tag().tagged and t.with_tag().cc[17:19] == TAG
    assert not t.with_tag().with_tag(b"\0\0").tagged


# -- modem counting


def _levels(**on: bool) -> Signals:
    return Signals(**{name: on.get(name, False) for name in ("cts", "dsr", "dcd", "ri")})


def test_transitions_are_counted_as_a_driver_counts_them():
    counter = ModemCounter()
    counter.update(Signals(), _levels(cts=True))  # the first report is a level, not a change
    assert counter.counts == {"cts": 0, "dsr": 0, "ri": 0, "dcd": 0}
    counter.update(_levels(cts=True), _levels(dsr=True))
    assert counter.counts == {"cts": 1, "dsr": 1, "ri": 0, "dcd": 0}
    counter.update(_levels(dsr=True), _levels(dsr=True), state=0x08)  # DCD went and came back
    assert counter.counts["dcd"] == 2
    counter.update(_levels(ri=True), _levels())  # RI counts its trailing edge only
    counter.update(_levels(), _levels(ri=True))
    assert counter.counts["ri"] == 1


def test_tiocmiwait_wakes_only_for_the_lines_asked():
    async def scenario() -> list[str]:
        counter = ModemCounter()
        woke: list[str] = []
        cts = asyncio.ensure_future(counter.wait(termios.TIOCM_CTS))
        cts.add_done_callback(lambda _: woke.append("cts"))
        dcd = asyncio.ensure_future(counter.wait(termios.TIOCM_CAR | termios.TIOCM_DSR))
        dcd.add_done_callback(lambda _: woke.append("dcd/dsr"))
        await asyncio.sleep(0)
        counter.update(_levels(), _levels(dsr=True))
        for _ in range(3):  # the waiter's future, its task, then the task's callbacks
            await asyncio.sleep(0)
        assert woke == ["dcd/dsr"] and counter.waiting == 1
        counter.cancel_all(OSError(5, "gone"))
        with pytest.raises(OSError):
            await cts
        return woke

    assert asyncio.run(scenario()) == ["dcd/dsr", "cts"]  # cts only by the cancellation


# -- the BPF filter, run by a small interpreter of the instructions it uses


def _run_bpf(program: bytes, arch: int, nr: int, request: int) -> int:
    data = struct.pack("=iIQ6Q", nr, arch, 0, 3, request, 0, 0, 0, 0)
    pc = 0
    acc = 0
    while True:
        code, jt, jf, k = struct.unpack_from("=HBBI", program, pc * 8)
        if code == 0x20:
            acc = struct.unpack_from("=I", data, k)[0]
            pc += 1
        elif code == 0x15:
            pc += 1 + (jt if acc == k else jf)
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected BPF opcode {code:#x}")


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the expected numbers are x86_64's")
def test_the_filter_stops_only_terminal_ioctls():
    program = seccomp.filter_program()
    notify, allow = 0x7FC00000, 0x7FFF0000
    x86_64, i386 = 0xC000003E, 0x40000003
    for request in (termios.TCGETS, TCSETS2, TCGETS2, termios.TIOCMGET, seccomp.TIOCMIWAIT, seccomp.TIOCSBRK):
        assert _run_bpf(program, x86_64, 16, request) == notify
        assert _run_bpf(program, i386, 54, request) == notify  # 32-bit programs too
    assert _run_bpf(program, x86_64, 16, termios.FIONREAD) == allow  # another ioctl
    assert _run_bpf(program, x86_64, 0, termios.TCGETS) == allow  # read(2) whose second argument looks alike
    assert _run_bpf(program, x86_64, 16, termios.TCGETS | (1 << 32)) == notify  # the kernel uses 32 bits
    assert _run_bpf(program, 0xC00000B7, 29, termios.TCGETS) == allow  # an ABI the filter does not know


def test_the_programs_noted_per_port_stay_bounded() -> None:
    # Both the request socket and a handed-over listener note who reached a port (for status); short-lived
    # programs, or a program's many threads, must not grow that record without end.
    import os
    from types import SimpleNamespace

    from vcom.interposer import server

    port = SimpleNamespace(view=SimpleNamespace(interposed={}), pty=SimpleNamespace(slave_path="/nonexistent/pts"))
    server.note_interposed(port, os.getpid(), "seccomp")
    assert port.view.interposed == {os.getpid(): "seccomp"}
    for pid in range(1_000_000, 1_000_000 + server._REMEMBERED_PROGRAMS + 1):
        server.note_interposed(port, pid, "seccomp")
    # Past the bound only those still holding the port open are kept: none of these do.
    assert len(port.view.interposed) <= server._REMEMBERED_PROGRAMS


_HOLDER = """
import os, sys, threading
fd = os.open(sys.argv[1], os.O_RDONLY)
thread = threading.Thread(target=sys.stdin.read, daemon=True)
thread.start()
print(thread.native_id, fd, flush=True)
sys.stdin.read()
"""


class _Holder:
    """A process that holds ``path`` open and has a second thread: (its pid, the thread's id, the fd)."""

    def __init__(self, path: str) -> None:
        import subprocess
        import sys

        self.proc = subprocess.Popen([sys.executable, "-c", _HOLDER, path], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.tid, self.fd = map(int, self.proc.stdout.readline().split())

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def _same_file(local: int, path: str) -> bool:
    import os

    try:
        return os.path.samestat(os.fstat(local), os.stat(path))
    finally:
        os.close(local)


def test_kept_pidfds_take_descriptors_of_the_process_asked_for(tmp_path) -> None:
    import os

    files = [tmp_path / "a", tmp_path / "b"]
    for f in files:
        f.write_bytes(b"")
    first, second = _Holder(str(files[0])), _Holder(str(files[1]))
    kept = seccomp.KeptPidfds()
    try:
        for _ in range(2):  # the second time from the kept pidfd
            assert _same_file(kept.get_fd(first.proc.pid, first.fd), str(files[0]))
        assert list(kept._kept) == [first.proc.pid]
        # A thread that is not the process itself gets its process's descriptors, and nothing is kept for
        # it: its id could come back as another process's pid while the first one lives.
        assert _same_file(kept.get_fd(first.tid, first.fd), str(files[0]))
        assert list(kept._kept) == [first.proc.pid]
        # A kept pidfd whose process is gone, under a pid that is now another process's (as when pids wrap
        # round): that process's descriptor, not a failure and not the old one's.
        gone = kept._kept[first.proc.pid]
        first.stop()
        kept._kept[second.proc.pid] = os.dup(gone)
        assert _same_file(kept.get_fd(second.proc.pid, second.fd), str(files[1]))
        with pytest.raises(OSError):
            kept.get_fd(first.proc.pid, first.fd)  # gone: an error, and its pidfd is closed
        assert list(kept._kept) == [second.proc.pid]
    finally:
        first.stop()
        second.stop()
        kept.close()
    assert kept._kept == {}


def test_kept_pidfds_stay_bounded(tmp_path) -> None:
    import os

    path = tmp_path / "f"
    path.write_bytes(b"")
    holders = [_Holder(str(path)) for _ in range(3)]
    kept = seccomp.KeptPidfds(limit=2)
    before = len(os.listdir("/proc/self/fd"))
    try:
        for holder in holders:
            assert _same_file(kept.get_fd(holder.proc.pid, holder.fd), str(path))
        assert list(kept._kept) == [holders[2].proc.pid]  # the third closed the two kept before it
        assert len(os.listdir("/proc/self/fd")) == before + 1
        kept.close()
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        kept.close()
        for holder in holders:
            holder.stop()


def test_a_users_wrapped_programs_ask_the_system_manager_when_the_user_runs_none(tmp_path, monkeypatch) -> None:
    import socket

    from vcom import paths

    monkeypatch.delenv("VCOM_HOME", raising=False)
    own = paths.Paths(tmp_path / "c.toml", tmp_path / "vcom.sock", tmp_path / "vcom.pid", tmp_path / "vcom.log",
                      tmp_path / "own.sock", tmp_path / "lib")
    system = tmp_path / "system.sock"

    def listening(path):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        sock.listen()
        return sock

    assert paths.interposer_for_programs(own, system) == own.interposer  # neither runs: as before
    with listening(system):
        assert paths.interposer_for_programs(own, system) == system  # vcom.service's ports, no manager of one's own
        with listening(own.interposer):
            assert paths.interposer_for_programs(own, system) == own.interposer  # one's own answers first
        # A socket file left by a manager that died is not a manager.
        assert own.interposer.exists()
        assert paths.interposer_for_programs(own, system) == system
        monkeypatch.setenv("VCOM_HOME", str(tmp_path))  # names the one manager meant
        assert paths.interposer_for_programs(own, system) == own.interposer
