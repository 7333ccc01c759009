"""One virtual serial port on the kernel side: a pty pair and its symlink.

A program opens ``/dev/ttyV0``, a symlink to the slave ``/dev/pts/N``; the
manager keeps only the master.  Everything the manager needs to know about
the program's use of the port comes from the master, without polling:

* data the program writes, and termios changes and flushes: the master is
  in packet mode (``TIOCPKT``), so every read starts with a status byte
  (0 = data follows, else ``TIOCPKT_*`` flags).  Termios changes are only
  reported while ``EXTPROC`` is set in the slave's ``c_lflag``; this module
  sets it, locks it where the kernel allows (``TIOCSLCKTRMIOS``), and
  otherwise ``ensure_extproc`` restores it after a program cleared it.
* whether a program holds the slave open: ``poll`` on the master reports
  POLLHUP while nobody does (``slave_is_open``); inotify on ``slave_path``
  (``vcom.inotify``) reports each open and close.  The manager never keeps
  the slave open itself, or it could not see either.

Kernel facts this relies on (pinned by tests/test_pty.py):

* A status byte is returned by a read of its own, and *before* data that is
  already queued: bytes the program wrote before a ``tcsetattr`` are read
  after the ``TIOCPKT_IOCTL`` byte.  ``TCSADRAIN`` does not change that (a
  pty has no transmitter to drain).
* After the last close of the slave the master still reads everything
  written before the close, status bytes included, then gets EIO.
* The pty driver forces CS8 and no parity on every termios set.
* EXTPROC switches the slave's *input* processing to raw, whatever the
  other flags say: no ICRNL, no erase/kill, no echo, no signals, and a
  canonical-mode read returns what has arrived without waiting for a line.
  Raw-mode programs (nearly all serial programs) see no difference; output
  processing (OPOST, ONLCR) is unaffected.
* Bytes written to the master while no program has the slave open are kept
  for the next program that opens it (a real UART would drop them).

New ports start with the termios of a freshly probed UART (9600 8N1, CLOCAL,
HUPCL, IXON, ICANON, ECHO), not the pty defaults (38400, no CLOCAL).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import os
import pwd
import secrets
import select
import stat
import struct
import termios
from collections.abc import Callable
from dataclasses import dataclass, replace

from vcom.portpath import PortPathError, check_port_path
from vcom.settings import LineSettings
from vcom.termio import (
    EXTPROC,
    TAG_SLOTS,
    Termios2,
    fresh_uart_termios,
    get_termios2,
    lock_lflag_bits,
    set_termios2,
    speed_of,
    to_line_settings,
)

# Packet-mode status bits (<asm-generic/ioctls.h>); TIOCPKT_IOCTL is not
# exported by the termios module.
TIOCPKT_DATA = 0x00
TIOCPKT_FLUSHREAD = 0x01
TIOCPKT_FLUSHWRITE = 0x02
TIOCPKT_STOP = 0x04
TIOCPKT_START = 0x08
TIOCPKT_NOSTOP = 0x10
TIOCPKT_DOSTOP = 0x20
TIOCPKT_IOCTL = 0x40
# The pty number of a master: _IOR('T', 0x30, unsigned int); not exported by the termios module.
TIOCGPTN = 0x80045430
# The most one read of a master returns, status byte included: the line discipline hands over its buffer
# (N_TTY_BUF_SIZE, 4 KiB) and is refilled only after the read.  Asking for more only allocates more.
READ_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Ownership:
    """Owner, group and mode for the slave node.  ``None`` leaves the owner
    or group as the kernel made it (devpts: the manager's uid, and the gid
    and mode of the devpts mount options)."""

    owner: str | int | None = None
    group: str | int | None = None
    mode: int = 0o660


@dataclass(frozen=True, slots=True)
class PtyRead:
    """What one read of the master gave.  Either data or status flags: the
    kernel never returns both in one read.  All-false and empty is possible
    (a status byte that only echoed the manager's own ``discard_output``).
    ``closed``: the read gave EIO: no process has the slave open and
    everything written before the last close has been read."""

    data: bytes
    flush_read: bool = False
    flush_write: bool = False
    ioctl: bool = False
    stop: bool = False
    start: bool = False
    nostop: bool = False
    dostop: bool = False
    closed: bool = False


class VirtualPty:
    """A pty pair whose slave is reachable as ``link_path``.

    Nothing is created before ``open``; ``close`` undoes it.  All fds are
    non-blocking and close-on-exec; no method blocks.
    """

    def __init__(self, link_path: str, *, ownership: Ownership = Ownership(), baud: int = 9600):
        if baud <= 0:
            raise ValueError(f"baud rate must be positive, not {baud}")
        self.link_path: str = os.path.abspath(link_path)
        self.ownership = ownership
        self.baud = baud
        self.master_fd: int = -1
        self.slave_path: str = ""
        self.slave_rdev: int = 0  # device number of the slave: how the interposer names the port
        # True when the kernel keeps EXTPROC set whatever a program does.
        self.extproc_locked: bool = False
        # The rate to report while the program has set B0 (hang up).
        self._last_baud = baud
        # discard_output raises TIOCPKT_FLUSHREAD itself; that one is not
        # the program's flush and must not be reported as such.
        self._own_flush_pending = False
        # Bytes went to the program since the last status byte was handled: only then can a flush by the
        # program have left any of ours unflushed (see discard_output).
        self.delivered = False
        self._poller: select.poll | None = None
        self._poller_fd = -1

    # -- life cycle -----------------------------------------------------

    def open(self, *, replace_symlink: bool = False, lock_extproc: bool = True) -> None:
        """Create the pty and the symlink.  Raises PortPathError (with
        nothing left behind) when the path or ownership cannot be used.

        ``lock_extproc`` asks the kernel to keep EXTPROC set (needs
        CAP_SYS_ADMIN; silently not done without it, see ``extproc_locked``).
        """
        if self.master_fd >= 0:
            raise RuntimeError(f"{self.link_path} is already open")
        uid, gid = _resolve_ownership(self.ownership)
        check_port_path(self.link_path, replace_symlink=replace_symlink)
        master, slave = os.openpty()
        try:
            slave_path = os.ttyname(slave)
            slave_rdev = os.fstat(slave).st_rdev
        finally:
            # Holding the slave would hide every open and close by programs.
            os.close(slave)
        try:
            locked = self._configure(master, lock_extproc=lock_extproc)
            _apply_ownership(slave_path, uid, gid, self.ownership)
            _place_symlink(slave_path, self.link_path)
        except BaseException:
            os.close(master)
            raise
        self.master_fd = master
        self.slave_path = slave_path
        self.slave_rdev = slave_rdev
        self.extproc_locked = locked
        self._own_flush_pending = False

    def adopt(self, master: int, *, lock_extproc: bool = True) -> bool:
        """Take over the master of a pty an earlier manager made (handed back by the keeper or systemd's
        store): the program on it keeps its descriptor and its termios.  The symlink is made to lead to
        this pty again if it does not.  False (``master`` closed) when it is not a usable pty master."""
        if self.master_fd >= 0:
            raise RuntimeError(f"{self.link_path} is already open")
        try:
            number = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))[0]
            slave_path = f"/dev/pts/{number}"
            slave_rdev = os.stat(slave_path).st_rdev
            t = get_termios2(master)
        except OSError:
            os.close(master)
            return False
        os.set_blocking(master, False)
        os.set_inheritable(master, False)
        if not (t.lflag & EXTPROC and t.tagged):
            set_termios2(master, replace(t, lflag=t.lflag | EXTPROC).with_tag())
        locked = lock_extproc and lock_lflag_bits(master, EXTPROC, TAG_SLOTS)
        # Packet mode is a property of the open file, kept across managers; set it again in case.
        fcntl.ioctl(master, termios.TIOCPKT, struct.pack("i", 1))
        with contextlib.suppress(OSError):
            if os.readlink(self.link_path) == slave_path:
                self._adopted(master, slave_path, slave_rdev, locked)
                return True
        try:
            check_port_path(self.link_path, replace_symlink=True)
            _place_symlink(slave_path, self.link_path)
        except BaseException:
            os.close(master)
            raise
        self._adopted(master, slave_path, slave_rdev, locked)
        return True

    def _adopted(self, master: int, slave_path: str, slave_rdev: int, locked: bool) -> None:
        self.master_fd = master
        self.slave_path = slave_path
        self.slave_rdev = slave_rdev
        self.extproc_locked = locked
        self._own_flush_pending = False
        speed = speed_of(self.termios())
        if speed:
            self._last_baud = speed

    def _configure(self, master: int, *, lock_extproc: bool) -> bool:
        """Non-blocking, fresh UART termios with EXTPROC and the vcom tag,
        packet mode; whether EXTPROC (and the tag) are locked."""
        os.set_blocking(master, False)
        os.set_inheritable(master, False)
        t = fresh_uart_termios(self.baud)
        set_termios2(master, replace(t, lflag=t.lflag | EXTPROC).with_tag())
        locked = lock_extproc and lock_lflag_bits(master, EXTPROC, TAG_SLOTS)
        # Packet mode last: turning it on clears pending status, so the
        # first read does not report our own termios set as a change.
        fcntl.ioctl(master, termios.TIOCPKT, struct.pack("i", 1))
        return locked

    def close(self, *, remove_link: bool = True) -> None:
        """Close the master (the kernel then removes ``/dev/pts/N``) and
        remove the symlink if it still points to our slave: a symlink that
        someone re-pointed meanwhile is theirs."""
        if self.master_fd < 0:
            return
        if remove_link:
            with contextlib.suppress(OSError):
                if os.readlink(self.link_path) == self.slave_path:
                    os.unlink(self.link_path)
        os.close(self.master_fd)
        self.master_fd = -1
        self.extproc_locked = False

    # -- settings -------------------------------------------------------

    def termios(self) -> Termios2:
        return get_termios2(self.master_fd)

    def settings(self) -> LineSettings:
        """The program's current settings.  While it has set B0 (hang up),
        the baud is the last real rate; ``speed_of(termios())`` is 0."""
        t = self.termios()
        speed = speed_of(t)
        if speed:
            self._last_baud = speed
        return to_line_settings(t, fallback_baud=self._last_baud)

    def ensure_extproc(self, t: Termios2 | None = None) -> bool:
        """Set EXTPROC and the vcom tag again if a program cleared them; True
        if it had to.  ``t``: the termios just read, if the caller has it.

        Without EXTPROC the kernel stops reporting termios changes; without
        the tag the interposer no longer recognises the port.  The program
        can change termios between our read and write here; that change
        would be overwritten.  ``extproc_locked`` ports never need this.
        """
        if t is None:
            t = self.termios()
        if t.lflag & EXTPROC and t.tagged:
            return False
        set_termios2(self.master_fd, replace(t, lflag=t.lflag | EXTPROC).with_tag())
        return True

    def apply(self, t: Termios2, *, flush_input: bool = False) -> Termios2:
        """Set the slave's termios to ``t`` for a program (the interposer's
        TCSETS*), keeping EXTPROC and the tag; returns what the kernel kept
        (it forces CS8, no parity and CREAD on a pty)."""
        set_termios2(self.master_fd, replace(t, lflag=t.lflag | EXTPROC).with_tag(), flush_input=flush_input)
        if flush_input:
            self._own_flush_pending = True
        return self.termios()

    # -- state ----------------------------------------------------------

    def slave_is_open(self) -> bool:
        """Whether any process holds the slave open (no POLLHUP)."""
        return not self._poll() & select.POLLHUP

    def has_pending(self) -> bool:
        """Whether the master has something to read (data or a status byte),
        e.g. what a program wrote before a close that vcom has not read yet."""
        return bool(self._poll() & select.POLLIN)

    def pending_bytes(self) -> int:
        """How many bytes the program wrote that vcom has not read yet (FIONREAD on the master)."""
        raw = fcntl.ioctl(self.master_fd, termios.FIONREAD, struct.pack("i", 0))
        return struct.unpack("i", raw)[0]

    def _poll(self) -> int:
        # One poll object per master, made once: this runs for every delivery of network data.
        if self._poller_fd != self.master_fd:
            self._poller = select.poll()
            self._poller.register(self.master_fd, select.POLLIN)
            self._poller_fd = self.master_fd
        assert self._poller is not None
        events = 0
        for _, revents in self._poller.poll(0):
            events |= revents
        return events

    # -- data -----------------------------------------------------------

    def read_data(self, limit: int) -> tuple[bytes, PtyRead | None]:
        """What the program wrote, from as many reads as it takes up to ``limit`` bytes, and what ended the
        reads if not the data running out: a status byte or the slave's close, to be handled *after* the
        data (the program wrote that data before it).

        A read that comes back short ends it: nothing more was queued, and another read would only learn
        that (a system call, and an exception, per wake-up).  Data bytes come without their status bytes."""
        fd = self.master_fd
        size = min(READ_SIZE, max(limit, 1) + 1)  # up to limit data bytes (a paced port takes no more)
        try:
            chunk = os.read(fd, size)
        except BlockingIOError:
            return b"", None
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b"", PtyRead(b"", closed=True)
            raise
        if chunk[:1] == b"\0" and len(chunk) < size:
            return chunk[1:], None  # what a port with a trickle of data gets every time: one short read
        pieces: list[bytes] = []
        got = 0
        event: PtyRead | None = None
        while True:
            if not chunk:
                event = PtyRead(b"", closed=True)
                break
            if chunk[0] != TIOCPKT_DATA:
                event = self._parse(chunk)
                break
            pieces.append(chunk)
            got += len(chunk) - 1
            if len(chunk) < size or got >= limit:
                break
            size = min(READ_SIZE, limit - got + 1)
            try:
                chunk = os.read(fd, size)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EIO:
                    event = PtyRead(b"", closed=True)
                break  # the data read before the error goes first; another error comes again next time
        if not pieces:
            return b"", event
        if len(pieces) == 1:
            return pieces[0][1:], event
        return b"".join([memoryview(piece)[1:] for piece in pieces]), event

    def read(self, size: int = READ_SIZE) -> PtyRead | None:
        """One read of the master; None when nothing is queued."""
        if size < 2:
            raise ValueError("a packet-mode read needs room for the status byte and data")
        try:
            chunk = os.read(self.master_fd, size)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno == errno.EIO:
                # No process has the slave open and all it wrote was read.
                return PtyRead(b"", closed=True)
            raise
        if not chunk:
            return PtyRead(b"", closed=True)
        return self._parse(chunk)

    def parse(self, chunk: bytes) -> PtyRead:
        """A read someone else made of the master (the express relay), as ``read`` would return it."""
        return self._parse(chunk)

    def _parse(self, chunk: bytes) -> PtyRead:
        status = chunk[0]
        if status == TIOCPKT_DATA:
            return PtyRead(chunk[1:])
        if self._own_flush_pending and status & TIOCPKT_FLUSHREAD:
            # Our own flush always lands in the next status byte: the kernel
            # sets the bit synchronously in discard_output.
            self._own_flush_pending = False
            status &= ~TIOCPKT_FLUSHREAD
        return PtyRead(
            chunk[1:],
            flush_read=bool(status & TIOCPKT_FLUSHREAD),
            flush_write=bool(status & TIOCPKT_FLUSHWRITE),
            ioctl=bool(status & TIOCPKT_IOCTL),
            stop=bool(status & TIOCPKT_STOP),
            start=bool(status & TIOCPKT_START),
            nostop=bool(status & TIOCPKT_NOSTOP),
            dostop=bool(status & TIOCPKT_DOSTOP),
        )

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Queue bytes for the program; how many were taken (0 when the pty
        is full, about 18 KiB in flight).  While no program has the slave
        open the kernel still accepts them for the next program to open it:
        the caller decides whether to write then at all."""
        try:
            taken = os.write(self.master_fd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            if exc.errno == errno.EIO:
                return 0
            raise
        if taken:
            self.delivered = True
        return taken

    def discard_output(self) -> None:
        """Drop what the manager wrote that the program has not read yet.

        It sits in two places on the slave's side: the tty buffer not yet
        taken by the line discipline, and the line discipline's own buffer
        (up to 4 KiB).  ``tcflush(master, TCOFLUSH)`` empties the first
        (``pty_flush_buffer``); ``TCSETSF2`` with unchanged termios empties
        the second.  ``tcflush(master, TCIFLUSH)`` would not help: it
        flushes the master's own input, i.e. data *from* the program.

        Like ``ensure_extproc``, the set can overwrite a termios change the
        program makes between our read and write, so avoid calling this
        while a program is likely configuring the port (just after open).
        The next status byte then carries TIOCPKT_IOCTL; the FLUSHREAD this
        raises is not reported as the program's (nor is a flush by the
        program that the kernel merges into the same status byte).
        """
        termios.tcflush(self.master_fd, termios.TCOFLUSH)
        set_termios2(self.master_fd, self.termios(), flush_input=True)
        self._own_flush_pending = True


def _resolve_ownership(ownership: Ownership) -> tuple[int, int]:
    """(uid, gid) with -1 for "leave as is"."""
    if not 0 <= ownership.mode <= 0o7777:
        raise PortPathError(f"invalid mode {ownership.mode:o}")
    uid = _resolve_id(ownership.owner, "user", lambda name: pwd.getpwnam(name).pw_uid)
    gid = _resolve_id(ownership.group, "group", lambda name: grp.getgrnam(name).gr_gid)
    return uid, gid


def _resolve_id(value: str | int | None, kind: str, lookup: Callable[[str], int]) -> int:
    if value is None:
        return -1
    if isinstance(value, int):
        if value < 0:
            raise PortPathError(f"invalid {kind} id {value}")
        return value
    try:
        return lookup(value)
    except KeyError:
        # Like chown(1): a name that is not known but is all digits is an id.
        if value.isdigit():
            return int(value)
        raise PortPathError(f"unknown {kind} {value!r}") from None


def _apply_ownership(slave_path: str, uid: int, gid: int, ownership: Ownership) -> None:
    try:
        if uid != -1 or gid != -1:
            os.chown(slave_path, uid, gid)
        os.chmod(slave_path, ownership.mode)
    except OSError as exc:
        who = ":".join(str(part) for part in (ownership.owner, ownership.group) if part is not None)
        raise PortPathError(f"cannot give {slave_path} to {who or 'its owner'}: {exc.strerror}") from None


def _place_symlink(target: str, link_path: str) -> None:
    """Make ``link_path`` a symlink to ``target`` without a moment in which
    the name is missing or points at something half-made."""
    try:
        os.symlink(target, link_path)
        return
    except FileExistsError:
        pass  # a symlink check_port_path accepted: swap it in one rename
    except OSError as exc:
        raise PortPathError(f"cannot create {link_path}: {exc.strerror}") from None
    directory, name = os.path.split(link_path)
    temporary = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
    try:
        os.symlink(target, temporary)
        # rename(2) is atomic; re-check the kind first so that an object
        # that appeared since check_port_path is never replaced.
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISLNK(os.lstat(link_path).st_mode):
                raise PortPathError(f"{link_path} was taken meanwhile; choose another path")
        os.replace(temporary, link_path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise PortPathError(f"cannot create {link_path}: {exc.strerror}") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
