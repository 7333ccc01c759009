"""Minimal inotify through ctypes: learn when a program opens or closes a pty.

The manager must not hold a pty slave open (or it could not tell whether a
program does), so it watches the slave's node (``/dev/pts/N``) instead: the
kernel reports ``IN_OPEN`` and ``IN_CLOSE_*`` for every open and close of it,
also when the program opened the symlink.  One ``Inotify`` serves the whole
manager: a single non-blocking fd in the event loop for all ports, each port
with its own watch descriptor.  No polling.

Only the raw system calls are wrapped (``inotify_init1``,
``inotify_add_watch``, ``inotify_rm_watch`` from libc); events are parsed
from ``read()`` as ``struct inotify_event``.  See inotify(7).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass

# Event bits from <sys/inotify.h>.
IN_ACCESS = 0x00000001
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_CLOSE_NOWRITE = 0x00000010
IN_CLOSE = IN_CLOSE_WRITE | IN_CLOSE_NOWRITE
IN_OPEN = 0x00000020
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_MASK_ADD = 0x20000000
IN_ISDIR = 0x40000000
IN_ONESHOT = 0x80000000

# struct inotify_event: int wd; uint32 mask, cookie, len; char name[len].
_HEADER = struct.Struct("=iIII")
# Large enough for many events; the kernel needs room for at least one
# (header + NAME_MAX + 1) or read() fails with EINVAL.
_READ_SIZE = 65536

_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_init1.restype = ctypes.c_int
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_add_watch.restype = ctypes.c_int
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.inotify_rm_watch.restype = ctypes.c_int


@dataclass(frozen=True, slots=True)
class InotifyEvent:
    """One event.  ``wd`` is -1 for ``IN_Q_OVERFLOW`` (events were lost:
    the reader must re-check every watched object)."""

    wd: int
    mask: int
    cookie: int
    name: str


def _raise_errno(what: str) -> None:
    code = ctypes.get_errno()
    raise OSError(code, f"{what}: {os.strerror(code)}")


class Inotify:
    """An inotify instance: non-blocking, close-on-exec."""

    def __init__(self) -> None:
        # IN_NONBLOCK and IN_CLOEXEC are defined as O_NONBLOCK and O_CLOEXEC.
        fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            _raise_errno("inotify_init1")
        self.fd: int = fd

    def add_watch(self, path: str, mask: int) -> int:
        """Watch ``path`` (following symlinks unless IN_DONT_FOLLOW) and
        return its watch descriptor.  Watching the same inode again returns
        the same descriptor with the mask replaced."""
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            _raise_errno(f"inotify_add_watch {path}")
        return wd

    def rm_watch(self, wd: int) -> None:
        """Stop watching.  A watch the kernel already dropped (the node was
        deleted, as ``/dev/pts/N`` is when its master closes) is not an
        error: the kernel answers EINVAL for it."""
        if _libc.inotify_rm_watch(self.fd, wd) < 0:
            if ctypes.get_errno() == errno.EINVAL:
                return
            _raise_errno("inotify_rm_watch")

    def read_events(self) -> list[InotifyEvent]:
        """Every event queued now; [] when there is none."""
        events: list[InotifyEvent] = []
        while True:
            try:
                chunk = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                return events
            # The kernel returns whole events only, never a partial one.
            events.extend(_parse(chunk))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _parse(chunk: bytes) -> list[InotifyEvent]:
    events = []
    offset = 0
    while offset + _HEADER.size <= len(chunk):
        wd, mask, cookie, length = _HEADER.unpack_from(chunk, offset)
        offset += _HEADER.size
        # The name is NUL-padded to an aligned length; empty for a watched
        # file itself (names appear only for entries of a watched directory).
        raw_name = chunk[offset : offset + length].split(b"\0", 1)[0]
        offset += length
        events.append(InotifyEvent(wd=wd, mask=mask, cookie=cookie, name=os.fsdecode(raw_name)))
    return events
