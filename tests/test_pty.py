"""The pty side of a virtual port, against the real kernel.

The test plays the program: it opens the port's symlink and uses termios,
stty and pyserial on it, while ``VirtualPty`` (the manager's side) reads the
master.  Kernel facts the port layer builds on are pinned here, so that a
kernel that behaves otherwise fails a test instead of losing data.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import select
import stat
import subprocess
import termios
import tty
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import serial
from peers import run_as

from vcom.inotify import (
    IN_CLOSE,
    IN_CLOSE_NOWRITE,
    IN_CLOSE_WRITE,
    IN_IGNORED,
    IN_OPEN,
    IN_Q_OVERFLOW,
    Inotify,
    InotifyEvent,
)
from vcom.pty import Ownership, PortPathError, PtyRead, VirtualPty, check_port_path
from vcom.settings import FlowControl, LineSettings, StopBits
from vcom.termio import BOTHER, EXTPROC, get_termios2, set_termios2, speed_of, with_speed

IS_ROOT = os.geteuid() == 0
# Upper bound for waiting on the kernel's workqueue (flip buffer pushes);
# a bound on loops, never an expectation about speed.
WAIT = 2.0


# -- fixtures -----------------------------------------------------------------


@pytest.fixture
def make_port(tmp_path: Path) -> Iterator[Callable[..., VirtualPty]]:
    """Factory of opened ports in ``tmp_path``; all closed after the test."""
    ports: list[VirtualPty] = []

    def make(name: str = "ttyV0", *, replace_symlink: bool = False, lock_extproc: bool = True,
             **kwargs: Any) -> VirtualPty:
        port = VirtualPty(str(tmp_path / name), **kwargs)
        ports.append(port)
        port.open(replace_symlink=replace_symlink, lock_extproc=lock_extproc)
        return port

    yield make
    for port in ports:
        port.close()


@pytest.fixture
def port(make_port: Callable[..., VirtualPty]) -> VirtualPty:
    return make_port()


class Programs:
    """File descriptors the test opens as "the program"."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def open(self, path: str, flags: int = os.O_RDWR) -> int:
        fd = os.open(path, flags | os.O_NOCTTY)
        self.fds.append(fd)
        return fd

    def open_raw(self, path: str) -> int:
        """Open non-blocking in raw mode: no echo, no line editing."""
        fd = self.open(path, os.O_RDWR | os.O_NONBLOCK)
        tty.setraw(fd)
        return fd

    def close(self, fd: int) -> None:
        self.fds.remove(fd)
        os.close(fd)


@pytest.fixture
def programs() -> Iterator[Programs]:
    progs = Programs()
    try:
        yield progs
    finally:
        for fd in progs.fds:
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture
def inotify() -> Iterator[Inotify]:
    with Inotify() as watcher:
        yield watcher


# -- helpers ------------------------------------------------------------------


def next_read(port: VirtualPty) -> PtyRead:
    """The next read of the master, waiting (bounded) until it has something."""
    for _ in range(20):
        result = port.read()
        if result is not None:
            return result
        select.select([port.master_fd], [], [], WAIT / 20)
    raise AssertionError("the master had nothing to read")


def drain(port: VirtualPty) -> list[PtyRead]:
    """Everything readable now."""
    reads = []
    for _ in range(1000):
        result = port.read()
        if result is None or result.closed:
            return reads
        reads.append(result)
    raise AssertionError("the master never ran dry")


def read_data(port: VirtualPty, size: int) -> bytes:
    """``size`` bytes of data from the master, skipping status bytes."""
    data = b""
    for _ in range(1000):
        if len(data) >= size:
            return data
        result = next_read(port)
        assert not result.closed, f"closed after {len(data)} of {size} bytes"
        data += result.data
    raise AssertionError("data did not arrive")


def read_program(fd: int, size: int) -> bytes:
    """``size`` bytes from a non-blocking program fd."""
    data = b""
    idle = 0
    while len(data) < size and idle < 20:  # give up after 20 waits without progress
        select.select([fd], [], [], WAIT / 20)
        try:
            data += os.read(fd, 65536)
            idle = 0
        except BlockingIOError:
            idle += 1
    assert len(data) >= size, f"the program got {len(data)} of {size} bytes"
    return data


def nothing_for_program(fd: int) -> bool:
    try:
        os.read(fd, 65536)
    except BlockingIOError:
        return True
    return False


def set_attrs(fd: int, change: Callable[[list[Any]], None], when: int = termios.TCSANOW) -> None:
    attrs = termios.tcgetattr(fd)
    change(attrs)
    termios.tcsetattr(fd, when, attrs)


def stty(*args: str) -> str:
    return subprocess.run(["stty", *args], check=True, capture_output=True, text=True, timeout=30).stdout


# -- the symlink and its path -------------------------------------------------


def test_open_links_to_a_fresh_pty(port: VirtualPty) -> None:
    assert port.slave_path.startswith("/dev/pts/")
    assert os.readlink(port.link_path) == port.slave_path
    assert not port.slave_is_open()  # the manager does not hold the slave
    assert os.get_blocking(port.master_fd) is False
    assert os.get_inheritable(port.master_fd) is False
    assert port.read() == PtyRead(b"", closed=True)  # no program, nothing pending
    assert drain(port) == []


def test_close_removes_link_and_pty(make_port: Callable[..., VirtualPty], inotify: Inotify) -> None:
    port = make_port()
    # Not os.path.exists: another process may get the same pts number at once.
    wd = inotify.add_watch(port.slave_path, IN_OPEN)
    port.close()
    assert not os.path.lexists(port.link_path)
    assert inotify.read_events() == [InotifyEvent(wd, IN_IGNORED, 0, "")]  # the node is gone
    assert port.master_fd == -1
    port.close()  # idempotent


def test_close_leaves_a_link_someone_repointed(make_port: Callable[..., VirtualPty], tmp_path: Path) -> None:
    port = make_port()
    other = tmp_path / "other"
    other.write_text("")
    os.unlink(port.link_path)
    os.symlink(other, port.link_path)
    port.close()
    assert os.readlink(port.link_path) == str(other)


def test_close_can_keep_the_link(make_port: Callable[..., VirtualPty]) -> None:
    port = make_port()
    port.close(remove_link=False)
    assert os.path.islink(port.link_path)


def test_dangling_symlink_is_replaced_without_leftovers(make_port: Callable[..., VirtualPty],
                                                        tmp_path: Path) -> None:
    (tmp_path / "ttyV0").symlink_to("/dev/pts/999999")
    port = make_port()
    assert os.readlink(port.link_path) == port.slave_path
    assert os.listdir(tmp_path) == ["ttyV0"]  # no temporary name left behind


def test_live_symlink_needs_replace(make_port: Callable[..., VirtualPty], tmp_path: Path) -> None:
    first = make_port("first")
    (tmp_path / "ttyV0").symlink_to(first.slave_path)
    with pytest.raises(PortPathError, match="symlink"):
        make_port()
    assert os.readlink(tmp_path / "ttyV0") == first.slave_path  # untouched
    port = make_port(replace_symlink=True)
    assert os.readlink(port.link_path) == port.slave_path
    assert sorted(os.listdir(tmp_path)) == ["first", "ttyV0"]


@pytest.mark.parametrize("replace_symlink", [False, True])
def test_check_port_path_refuses_what_is_not_a_symlink(tmp_path: Path, replace_symlink: bool) -> None:
    (tmp_path / "file").write_text("")
    (tmp_path / "dir").mkdir()
    (tmp_path / "not-a-dir").write_text("")
    cases = {
        str(tmp_path / "file"): "regular file",
        str(tmp_path / "dir"): "directory",
        "/dev/null": "character device",
        str(tmp_path / "missing" / "ttyV0"): "does not exist",
        str(tmp_path / "not-a-dir" / "ttyV0"): "not a directory",
    }
    for path, reason in cases.items():
        with pytest.raises(PortPathError) as caught:
            check_port_path(path, replace_symlink=replace_symlink)
        message = str(caught.value)
        assert reason in message and "\n" not in message
    assert (tmp_path / "file").read_text() == ""  # nothing was touched


def test_check_port_path_accepts_absent_and_dangling(tmp_path: Path) -> None:
    (tmp_path / "stale").symlink_to("/dev/pts/999999")
    for name in ("ttyV0", "stale"):
        assert check_port_path(str(tmp_path / name), replace_symlink=False) is None
    # Only checked: nothing was created, and the stale link is left for open() to replace.
    assert sorted(os.listdir(tmp_path)) == ["stale"]
    assert os.readlink(tmp_path / "stale") == "/dev/pts/999999"
    # The same paths are then usable: a port opens on each.
    for name in ("ttyV0", "stale"):
        port = VirtualPty(str(tmp_path / name))
        port.open()
        try:
            assert os.readlink(tmp_path / name) == port.slave_path
        finally:
            port.close()


def test_a_taken_path_leaves_nothing_behind(tmp_path: Path) -> None:
    (tmp_path / "ttyV0").write_text("data")
    port = VirtualPty(str(tmp_path / "ttyV0"))
    with pytest.raises(PortPathError, match="regular file"):
        port.open()
    assert port.master_fd == -1
    assert (tmp_path / "ttyV0").read_text() == "data"
    assert os.listdir(tmp_path) == ["ttyV0"]


# -- ownership ----------------------------------------------------------------


@pytest.mark.skipif(not IS_ROOT, reason="chown to another user needs root")
def test_ownership_is_applied_to_the_slave(make_port: Callable[..., VirtualPty]) -> None:
    port = make_port(ownership=Ownership(owner="nobody", group="dialout", mode=0o640))
    st = os.stat(port.slave_path)
    assert (st.st_uid, st.st_gid) == (pwd.getpwnam("nobody").pw_uid, grp.getgrnam("dialout").gr_gid)
    assert stat.S_IMODE(st.st_mode) == 0o640


def test_none_leaves_owner_as_is(make_port: Callable[..., VirtualPty]) -> None:
    gid = os.getegid()
    port = make_port(ownership=Ownership(group=gid))
    st = os.stat(port.slave_path)
    assert (st.st_uid, st.st_gid) == (os.geteuid(), gid)
    assert stat.S_IMODE(st.st_mode) == 0o660


@pytest.mark.parametrize(
    "ownership", [Ownership(owner="no-such-user-vcom"), Ownership(group="no-such-group-vcom")]
)
def test_unknown_user_or_group_fails_before_anything_exists(tmp_path: Path, ownership: Ownership) -> None:
    port = VirtualPty(str(tmp_path / "ttyV0"), ownership=ownership)
    with pytest.raises(PortPathError, match="unknown"):
        port.open()
    assert os.listdir(tmp_path) == []
    assert port.master_fd == -1


def _as_nobody(action: Callable[[], str]) -> str:
    """Run ``action`` in a forked child with nobody's ids; its result or error."""
    nobody = pwd.getpwnam("nobody")
    return run_as(nobody.pw_uid, nobody.pw_gid, [], action)


@pytest.mark.skipif(not IS_ROOT, reason="switching to nobody needs root")
def test_as_a_normal_user(tmp_path: Path) -> None:
    link = f"/tmp/vcom-test-{os.getpid()}"

    def foreign_owner() -> str:
        port = VirtualPty(link, ownership=Ownership(owner=0))
        try:
            port.open()
        finally:
            port.close()
        return "opened"

    def plain() -> str:
        port = VirtualPty(link)
        port.open()
        try:
            return f"locked={port.extproc_locked} owner={os.stat(port.slave_path).st_uid}"
        finally:
            port.close()

    try:
        assert _as_nobody(lambda: str(check_port_path("/ttyV0", replace_symlink=False))) == (
            "NotWritable: cannot create /ttyV0: directory / is not writable"  # a PortPathError
        )
        assert _as_nobody(foreign_owner).startswith("PortPathError: cannot give /dev/pts/")
        assert not os.path.lexists(link)
        # Without CAP_SYS_ADMIN EXTPROC cannot be locked; the port works anyway.
        assert _as_nobody(plain) == f"locked=False owner={pwd.getpwnam('nobody').pw_uid}"
        assert not os.path.lexists(link)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)


# -- the fresh port -----------------------------------------------------------


def test_fresh_port_looks_like_a_probed_uart(port: VirtualPty) -> None:
    words = set(stty("-F", port.link_path, "-a").replace(";", " ").split())
    assert {"9600", "cs8", "-cstopb", "-parenb", "hupcl", "clocal", "cread", "-crtscts"} <= words
    assert {"icrnl", "ixon", "-ixoff", "opost", "onlcr", "icanon", "echo", "isig", "extproc"} <= words
    assert port.settings() == LineSettings(9600, flow_out=FlowControl.XONXOFF)


def test_fresh_port_at_a_standard_rate(make_port: Callable[..., VirtualPty]) -> None:
    port = make_port(baud=115200)
    assert "speed 115200 baud" in stty("-F", port.link_path, "-a")
    assert port.settings().baud == 115200


def test_fresh_port_at_a_rate_without_code(make_port: Callable[..., VirtualPty], programs: Programs) -> None:
    port = make_port(baud=250000)
    seen_by_program = get_termios2(programs.open(port.link_path))
    assert seen_by_program.cflag & termios.CBAUD == BOTHER
    assert (seen_by_program.ispeed, seen_by_program.ospeed) == (250000, 250000)
    assert port.settings().baud == 250000


# -- termios changes ----------------------------------------------------------


def test_tcsetattr_is_reported(port: VirtualPty, programs: Programs) -> None:
    fd = programs.open(port.link_path)

    def change(attrs: list[Any]) -> None:
        attrs[4] = attrs[5] = termios.B19200
        attrs[2] |= termios.CSTOPB | termios.CRTSCTS
        attrs[0] &= ~termios.IXON

    set_attrs(fd, change)
    result = next_read(port)
    assert result.ioctl and result.data == b""
    assert port.settings() == LineSettings(
        19200, stop_bits=StopBits.TWO, flow_out=FlowControl.RTSCTS, flow_in=FlowControl.RTSCTS
    )


def test_termios2_bother_is_reported_exactly(port: VirtualPty, programs: Programs) -> None:
    fd = programs.open(port.link_path)
    set_termios2(fd, with_speed(get_termios2(fd), 250000))
    assert next_read(port).ioctl
    assert port.termios().cflag & termios.CBAUD == BOTHER
    assert port.settings().baud == 250000


def test_software_flow_is_reported(port: VirtualPty, programs: Programs) -> None:
    fd = programs.open(port.link_path)

    def ixon_off(attrs: list[Any]) -> None:
        attrs[0] &= ~termios.IXON

    def ixon_ixoff_on(attrs: list[Any]) -> None:
        attrs[0] |= termios.IXON | termios.IXOFF

    set_attrs(fd, ixon_off)
    result = next_read(port)
    # The pty also says that ^S/^Q no longer stop output.
    assert result.ioctl and result.nostop and not result.dostop
    assert (port.settings().flow_out, port.settings().flow_in) == (FlowControl.NONE, FlowControl.NONE)
    set_attrs(fd, ixon_ixoff_on)
    result = next_read(port)
    assert result.ioctl and result.dostop
    assert (port.settings().flow_out, port.settings().flow_in) == (FlowControl.XONXOFF, FlowControl.XONXOFF)


@pytest.mark.parametrize(
    ("queue", "flush_read", "flush_write"),
    [(termios.TCIFLUSH, True, False), (termios.TCOFLUSH, False, True), (termios.TCIOFLUSH, True, True)],
)
def test_tcflush_is_reported(port: VirtualPty, programs: Programs, queue: int, flush_read: bool,
                             flush_write: bool) -> None:
    fd = programs.open(port.link_path)
    termios.tcflush(fd, queue)
    result = next_read(port)
    assert (result.flush_read, result.flush_write, result.ioctl) == (flush_read, flush_write, False)


def test_stty_is_reported(port: VirtualPty, programs: Programs) -> None:
    programs.open(port.link_path)  # keep it open so that the master does not read EIO first
    stty("-F", port.link_path, "19200", "cstopb", "crtscts")
    assert next_read(port).ioctl
    assert port.settings() == LineSettings(
        19200, stop_bits=StopBits.TWO, flow_out=FlowControl.RTSCTS, flow_in=FlowControl.RTSCTS
    )


def test_pyserial_is_reported_exactly(port: VirtualPty) -> None:
    with serial.Serial(port.link_path, 250000, stopbits=serial.STOPBITS_TWO, rtscts=True):
        reads = drain(port)
        assert any(r.ioctl for r in reads)
        assert port.settings() == LineSettings(
            250000, stop_bits=StopBits.TWO, flow_out=FlowControl.RTSCTS, flow_in=FlowControl.RTSCTS
        )
        # pyserial clears every c_lflag bit.  As root EXTPROC is locked and stays set; otherwise the
        # port has to set it again (and says so).
        assert port.extproc_locked is IS_ROOT
        assert port.ensure_extproc() is not IS_ROOT
        assert port.termios().lflag == EXTPROC


def test_b0_reports_hang_up_and_keeps_the_rate(port: VirtualPty, programs: Programs) -> None:
    fd = programs.open(port.link_path)
    set_termios2(fd, with_speed(get_termios2(fd), 19200))
    assert next_read(port).ioctl
    assert port.settings().baud == 19200
    set_termios2(fd, with_speed(get_termios2(fd), 0))
    assert next_read(port).ioctl
    assert speed_of(port.termios()) == 0
    assert port.settings().baud == 19200


def _clear_lflag(fd: int) -> None:
    set_termios2(fd, replace(get_termios2(fd), lflag=0))


def _set_speed(fd: int, baud: int) -> None:
    set_termios2(fd, with_speed(get_termios2(fd), baud))


def test_cleared_extproc_is_restored(make_port: Callable[..., VirtualPty], programs: Programs) -> None:
    port = make_port(lock_extproc=False)
    assert not port.extproc_locked
    fd = programs.open(port.link_path)
    _clear_lflag(fd)
    assert next_read(port).ioctl  # the change that clears EXTPROC is still reported
    _set_speed(fd, 38400)
    # The status byte is set inside the program's ioctl: nothing means nothing.
    assert port.read() is None
    assert port.ensure_extproc() is True
    assert port.termios().lflag == EXTPROC
    assert port.settings().baud == 38400  # what was missed is read now
    assert next_read(port).ioctl  # our own set is reported too: harmless
    _set_speed(fd, 57600)
    assert next_read(port).ioctl
    assert port.settings().baud == 57600
    assert port.ensure_extproc() is False


@pytest.mark.skipif(not IS_ROOT, reason="locking termios needs CAP_SYS_ADMIN")
def test_locked_extproc_cannot_be_cleared(port: VirtualPty, programs: Programs) -> None:
    assert port.extproc_locked
    fd = programs.open(port.link_path)
    _clear_lflag(fd)
    assert next_read(port).ioctl
    assert get_termios2(fd).lflag == EXTPROC
    assert port.ensure_extproc() is False
    _set_speed(fd, 38400)
    assert next_read(port).ioctl
    assert port.settings().baud == 38400


@pytest.mark.parametrize("when", [termios.TCSANOW, termios.TCSADRAIN])
def test_status_byte_overtakes_data_written_before_the_change(
    port: VirtualPty, programs: Programs, when: int
) -> None:
    """The ordering fact the port layer builds on: a termios change is read
    before data the program wrote ahead of it, even with TCSADRAIN."""
    fd = programs.open(port.link_path)
    os.write(fd, b"before")

    def to_19200(attrs: list[Any]) -> None:
        attrs[4] = attrs[5] = termios.B19200

    set_attrs(fd, to_19200, when)
    os.write(fd, b"after")
    first = next_read(port)
    assert first == PtyRead(b"", ioctl=True)
    assert read_data(port, len(b"beforeafter")) == b"beforeafter"


# -- opens, closes and data ---------------------------------------------------


def test_inotify_sees_opens_and_closes_through_the_symlink(
    port: VirtualPty, programs: Programs, inotify: Inotify
) -> None:
    wd = inotify.add_watch(port.slave_path, IN_OPEN | IN_CLOSE)
    assert inotify.read_events() == []
    first = programs.open(port.link_path)
    assert inotify.read_events() == [InotifyEvent(wd, IN_OPEN, 0, "")]
    assert port.slave_is_open()
    second = programs.open(port.link_path, os.O_RDONLY)
    programs.close(first)
    assert [e.mask for e in inotify.read_events()] == [IN_OPEN, IN_CLOSE_WRITE]
    assert port.slave_is_open()  # the read-only opener still holds it
    programs.close(second)
    assert inotify.read_events() == [InotifyEvent(wd, IN_CLOSE_NOWRITE, 0, "")]
    assert not port.slave_is_open()


def test_watch_ends_with_the_pty(make_port: Callable[..., VirtualPty], inotify: Inotify) -> None:
    port = make_port()
    wd = inotify.add_watch(port.slave_path, IN_OPEN | IN_CLOSE)
    port.close()
    masks = [e.mask for e in inotify.read_events() if e.wd == wd]
    assert masks == [IN_IGNORED]  # the node is gone and the kernel dropped the watch
    inotify.rm_watch(wd)  # the kernel already dropped it: tolerated


def test_inotify_reports_queue_overflow(tmp_path: Path, inotify: Inotify) -> None:
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 100_000:
        pytest.skip(f"max_queued_events is {limit}")
    target = tmp_path / "busy"
    target.write_text("")
    wd = inotify.add_watch(str(target), IN_OPEN | IN_CLOSE)
    for _ in range(limit // 2 + 1):  # two events each
        os.close(os.open(target, os.O_RDONLY))
    events = inotify.read_events()
    assert InotifyEvent(-1, IN_Q_OVERFLOW, 0, "") in events
    assert len(events) == limit + 1
    assert inotify.read_events() == []
    inotify.rm_watch(wd)
    inotify.rm_watch(wd)


def test_nothing_is_lost_when_the_program_closes(port: VirtualPty, programs: Programs) -> None:
    fd = programs.open(port.link_path)
    tty.setraw(fd)  # no output processing: the bytes arrive as written
    assert next_read(port).ioctl
    payload = bytes(range(256)) * 40  # 10 KiB: fits in the pty, so write() does not block
    os.write(fd, payload)
    _set_speed(fd, 19200)
    programs.close(fd)
    assert not port.slave_is_open()
    assert next_read(port) == PtyRead(b"", ioctl=True)  # the change made before the close
    assert read_data(port, len(payload)) == payload
    assert port.read() == PtyRead(b"", closed=True)
    # The next program is served again.
    fd = programs.open(port.link_path)
    os.write(fd, b"again")
    assert read_data(port, 5) == b"again"


def test_program_reads_what_the_manager_writes(port: VirtualPty, programs: Programs) -> None:
    fd = programs.open_raw(port.link_path)
    drain(port)
    payload = bytes(range(256)) * 8
    assert port.write(memoryview(payload)) == len(payload)
    assert read_program(fd, len(payload)) == payload


def test_write_applies_back_pressure(port: VirtualPty, programs: Programs) -> None:
    fd = programs.open_raw(port.link_path)
    chunk = bytes(range(256)) * 16
    sent = bytearray()
    for _ in range(1000):
        written = port.write(chunk)
        if written == 0:
            break
        sent += chunk[:written]
    else:
        raise AssertionError("the pty never filled up")
    assert len(sent) > 4096
    assert read_program(fd, len(sent)) == bytes(sent)
    assert port.write(b"more") == 4


def test_discard_output_drops_what_the_program_has_not_read(port: VirtualPty, programs: Programs) -> None:
    fd = programs.open_raw(port.link_path)
    drain(port)
    while port.write(b"x" * 4096):  # fill both buffers: line discipline and tty buffer
        pass
    port.discard_output()
    assert nothing_for_program(fd)
    # The flush was ours, not the program's: not reported as one.
    assert not any(r.flush_read for r in drain(port))
    port.write(b"fresh")
    assert read_program(fd, 5) == b"fresh"
    # A flush by the program is still reported.
    termios.tcflush(fd, termios.TCIFLUSH)
    assert next_read(port).flush_read


def test_extproc_makes_input_processing_raw(port: VirtualPty, programs: Programs) -> None:
    """With EXTPROC the slave's line discipline passes input through as is,
    even in canonical mode: no ICRNL, no erase, no echo, no line buffering.
    Raw-mode programs (nearly all serial programs) see no difference."""
    fd = programs.open(port.link_path, os.O_RDWR | os.O_NONBLOCK)  # the fresh port's cooked mode
    sent = b"ab\x7fc\rd\nxy"
    assert port.write(sent) == len(sent)
    assert read_program(fd, len(sent)) == sent
    assert drain(port) == []  # an echo would be queued before the program could read


def test_written_while_closed_waits_for_the_next_program(port: VirtualPty, programs: Programs) -> None:
    """A real UART drops what arrives while the port is closed; the kernel
    keeps it for the next program, so the port must not write then."""
    assert port.write(b"stale") == 5
    fd = programs.open(port.link_path, os.O_RDWR | os.O_NONBLOCK)
    assert read_program(fd, 5) == b"stale"


def test_discard_output_while_closed(port: VirtualPty, programs: Programs) -> None:
    assert port.write(b"stale") == 5
    port.discard_output()
    fd = programs.open(port.link_path, os.O_RDWR | os.O_NONBLOCK)
    assert nothing_for_program(fd)
    assert not any(r.flush_read for r in drain(port))


def test_a_directory_is_the_same_only_by_its_device_and_inode(tmp_path: Path) -> None:
    from vcom.portpath import PortPathError, check_same_directory, directory_identity

    port = str(tmp_path / "ttyV0")
    check_same_directory(port, directory_identity(port))
    check_same_directory(port, None)  # a control client that does not say: nothing to compare
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(PortPathError, match="the manager does not see the"):
        check_same_directory(port, directory_identity(str(other / "ttyV0")))
    for bad in ("x", [1], [1, "2"], [1.0, 2], {"dev": 1}):  # a control request written by hand
        with pytest.raises(PortPathError, match="names its directory wrongly"):
            check_same_directory(port, bad)


def test_a_file_is_the_same_only_by_its_device_and_inode(tmp_path: Path) -> None:
    from vcom.portpath import TLS_ADVICE, PortPathError, check_same_file, files_seen

    ca, other = tmp_path / "ca.pem", tmp_path / "other.pem"
    ca.write_text("a")
    other.write_text("b")
    seen = files_seen([str(ca), None, str(tmp_path / "missing.pem")])
    assert list(seen) == [str(ca)]  # what the client cannot tell is not sent
    check_same_file("--tls-ca", str(ca), seen, TLS_ADVICE)
    check_same_file("--tls-ca", str(tmp_path / "missing.pem"), seen, TLS_ADVICE)  # not sent: not checked
    check_same_file("--tls-ca", str(ca), None, TLS_ADVICE)  # a control client that does not say
    check_same_file("--tls-ca", None, seen, TLS_ADVICE)
    ca.unlink()
    other.rename(ca)  # another file under the same name: what a different mount would show
    with pytest.raises(PortPathError, match=r"^--tls-ca .*ca\.pem: the manager does not see the file you see .*"
                                            r"such as /etc/vcom"):
        check_same_file("--tls-ca", str(ca), seen, TLS_ADVICE)
    for bad in ("x", [1], [1, "2"], [1.0, 2]):  # a control request written by hand
        with pytest.raises(PortPathError, match="names the file wrongly"):
            check_same_file("--tls-ca", str(ca), {str(ca): bad}, TLS_ADVICE)
