"""The seccomp listener of ``vcom wrap`` handed to the manager, and taken back when the manager goes.

Why: under ``vcom wrap`` a program's ``tcsetattr`` woke three processes before it reached the server
(the supervisor, the manager, the server), and on an idle machine each wake-up is the largest cost
there is (tens of microseconds per idle CPU woken).  A manager that holds the listener itself answers
the trapped call in its own loop: one wake-up fewer, no request line, no second socket.

How: the supervisor sends ``handoff 0 LISTENER HELD PROGRAM`` on a connection of its own (the numbers
are its descriptors).  The manager takes both descriptors from the asking process itself
(``pidfd_getfd`` on the SO_PEERCRED pid: a process can only hand over what it holds), checks them, and
answers ``ok``; from then on it reads the listener and answers every notification (:class:`Handed`).
Taking a descriptor of another process needs the ptrace right over it (root, or the same user without
a ptrace restriction), and so does reaching into the program's memory: a manager without it answers
``no`` and the supervisor goes on answering as before.

What if the manager dies: a notification it had received and not answered would leave the program
waiting forever.  So the manager notes in a shared page (HELD, a sealed memfd of the supervisor's)
each notification id it holds, and the highest id it received.  The supervisor watches the handoff
connection; when it ends, it answers "continue" for every id noted there, and probes the few ids after
the highest (ids are sequential per listener: the one received and not yet noted can only be next),
then reads the listener itself again.  SECCOMP_IOCTL_NOTIF_ID_VALID tells which ids still wait; an
answer to one that has gone is refused by the kernel, harmlessly.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import mmap
import os
import select
import stat
import struct
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from . import protocol, seccomp
from .calls import Asking, CallAnswerer, Continue
from .seccomp import Notification

if TYPE_CHECKING:
    from ..port import Port

log = logging.getLogger(__name__)

SLOTS = 1023  # notifications held at once (one per waiting thread of the program): far more than occur
_ID = struct.Struct("=Q")
HELD_SIZE = _ID.size * (SLOTS + 1)  # the highest id received, then the slots (0: free)
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
PROBED = 16  # ids after the highest noted that the supervisor checks when it takes the listener back
PTY_SLAVE_MAJORS = range(136, 144)  # Unix98 pty slaves (Documentation/admin-guide/devices.txt)
DRAIN = 8  # notifications taken per wake-up of the loop: a busy program cannot hold up the other ports


def held_page() -> tuple[int, mmap.mmap]:
    """The supervisor's shared page: a memfd sealed at its size (a manager that maps it can never be made
    to fault by a shrink), and its mapping."""
    fd = os.memfd_create("vcom-held", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, HELD_SIZE)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    return fd, mmap.mmap(fd, HELD_SIZE)


def held_ids(page: mmap.mmap) -> list[int]:
    """Every id a manager may have held: the ones noted, and those just after the highest received."""
    last = highest(page)
    noted = {_ID.unpack_from(page, _ID.size * (1 + i))[0] for i in range(SLOTS)} - {0}
    if last:
        noted.update((last + k) & 0xFFFFFFFFFFFFFFFF for k in range(1, PROBED + 1))
    return sorted(noted)


def clear(page: mmap.mmap) -> None:
    page[:] = bytes(HELD_SIZE)


def note_highest(page: mmap.mmap, nid: int) -> None:
    _ID.pack_into(page, 0, nid)


def highest(page: mmap.mmap) -> int:
    return _ID.unpack_from(page, 0)[0]


def take(pid: int, listener_fd: int, held_fd: int) -> tuple[int, mmap.mmap]:
    """The listener and the mapped page, taken from process ``pid``; OSError with the reason when they
    cannot be taken or are not what they claim to be."""
    pidfd = os.pidfd_open(pid)
    taken: list[int] = []
    try:
        for fd in (listener_fd, held_fd):
            local = seccomp.take_fd(pidfd, fd)
            taken.append(local)
        listener, held = taken
        if os.readlink(f"/proc/self/fd/{listener}") != "anon_inode:seccomp notify":
            raise OSError(errno.EINVAL, "not a seccomp listener")
        if (fcntl.fcntl(held, fcntl.F_GET_SEALS) & _SEALS) != _SEALS or os.fstat(held).st_size != HELD_SIZE:
            raise OSError(errno.EINVAL, "not a sealed page of the right size")
        page = mmap.mmap(held, HELD_SIZE)
        os.close(held)
        taken.remove(held)
        return listener, page
    except BaseException:
        for fd in taken:
            os.close(fd)
        raise
    finally:
        os.close(pidfd)


class Handed(CallAnswerer):
    """A listener the manager holds: every notification is answered here, in the manager's loop, with the
    same requests the supervisor would have sent (answered in place by ``dispatch``)."""

    def __init__(self, listener: int, page: mmap.mmap, find_port: Callable[[int], Port | None],
                 dispatch: Callable[[Port, protocol.Request, int], Any], note: Callable[[Port, int, str], None],
                 ended: Callable[[Handed], None]) -> None:
        super().__init__(listener)
        self._page = page
        self._find = find_port
        self._dispatch = dispatch
        self._note = note
        self._ended = ended
        self._free = list(range(SLOTS, 0, -1))
        self._slot_of: dict[int, int] = {}
        self._closed = False
        self._poller = select.poll()
        self._poller.register(listener, select.POLLIN)

    def readable(self) -> None:
        # A program's next trapped call is often pending by the time its last one is answered (glibc's
        # tcsetattr makes TCGETS, TCSETS, TCGETS; the kernel runs the program as soon as it is answered):
        # it is taken here, not after another turn of the loop, up to DRAIN calls per wake-up.
        for _ in range(DRAIN):
            if not self._receive_one():
                return

    def _receive_one(self) -> bool:
        """Take and answer (or start answering) one pending notification; False: none was pending."""
        waiting = seccomp.pending(self._poller)
        if not waiting:
            if waiting is None:
                self._ended(self)
            return False
        try:
            n = seccomp.receive(self.listener)
        except OSError:
            self._ended(self)
            return False
        if n is None:
            return True
        note_highest(self._page, n.id)  # before anything else: see the module's comment
        if not self._free:
            seccomp.respond(self.listener, n.id, cont=True)  # no place to note it: the kernel's
            return True
        slot = self._free.pop()
        self._slot_of[n.id] = slot
        _ID.pack_into(self._page, _ID.size * slot, n.id)
        self.on_notification(n)
        return not self._closed

    def respond(self, n: Notification, *, value: int = 0, error: int = 0, cont: bool = False) -> None:
        if self._closed:
            return  # close() answered everything held, and the listener's number may be another file's now
        try:
            super().respond(n, value=value, error=error, cont=cont)
        finally:
            slot = self._slot_of.pop(n.id, None)
            if slot is not None:
                _ID.pack_into(self._page, _ID.size * slot, 0)
                self._free.append(slot)

    def close(self) -> None:
        """Stop answering: what is still held goes back to the kernel ("continue"); the supervisor, told
        by the end of its connection, reads the listener again."""
        if self._closed:
            return
        self._closed = True
        self.cancel()
        for nid in list(self._slot_of):
            with contextlib.suppress(OSError):
                seccomp.respond(self.listener, nid, cont=True)
        self._slot_of.clear()
        os.close(self.listener)
        with contextlib.suppress(BufferError):
            self._page.close()

    # -- CallAnswerer --------------------------------------------------------------------------------------

    def locate(self, n: Notification) -> tuple[int, Any, int] | None:
        # stat() through /proc follows the program's descriptor to the file itself, whatever its mount
        # namespace calls it: the device number names the port.
        try:
            st = os.stat(f"/proc/{n.pid}/fd/{n.fd}")
        except OSError:
            raise Continue from None
        if not stat.S_ISCHR(st.st_mode) or os.major(st.st_rdev) not in PTY_SLAVE_MAJORS:
            return None
        port = self._find(st.st_rdev)
        if port is None:
            return None
        return st.st_rdev, port, -1

    def answer_kept_tcgets(self, n: Notification, rdev: int, found: Any) -> bool:
        port: Port = found
        self.write_view(n, port.program_termios().pack())
        return True

    def tcgets_asking(self, n: Notification, rdev: int) -> Asking:
        raise Continue  # answer_kept_tcgets() answers every TCGETS

    def tcsets_asking(self, n: Notification, rdev: int, mode: str, raw: bytes) -> Asking:
        return Asking("tcsets", (mode, raw.hex()))

    def settle(self, n: Notification, rdev: int, asking: Asking) -> Coroutine[Any, Any, None] | None:
        """The request answered in place: a change the port can take at once (most) is made and answered
        in this callback, with no task and no further turn of the loop."""
        port = self._find(rdev)
        if port is None:
            raise Continue
        self._note(port, n.pid, "seccomp")  # by the calling thread, as the supervisor's requests named it
        answer = self._dispatch(port, protocol.Request(asking.verb, rdev, tuple(map(str, asking.args))), n.pid)
        if isinstance(answer, bytes):
            _take(answer, asking)
            return None
        return self._settle_later(answer, asking)

    async def _settle_later(self, waiting: Coroutine[Any, Any, bytes], asking: Asking) -> None:
        _take(await waiting, asking)


def _take(answer: bytes, asking: Asking) -> None:
    parsed = protocol.parse_answer(answer)
    if parsed.status == "no":
        raise Continue
    if parsed.status == "err":
        raise OSError(parsed.errno, os.strerror(parsed.errno))
    if asking.then is not None:
        asking.then(parsed.values)
