"""Whether a path may become a port's symlink: checked by the CLI before anything is started, and by
the manager before it creates the pty.  Kept apart from :mod:`vcom.pty` so that the check costs a
``vcom`` command no termios imports."""

from __future__ import annotations

import os
import stat


class PortPathError(Exception):
    """The port's path or ownership cannot be used; the message is one line."""


def check_port_path(path: str, *, replace_symlink: bool) -> None:
    """Raise PortPathError unless ``path`` may become the port's symlink.

    The parent must be a writable directory.  ``path`` may be absent or a
    symlink that leads nowhere (a port that was not cleaned up, typically
    into ``/dev/pts/`` after its pty is gone); a live symlink only with
    ``replace_symlink``.  A regular file, a directory, a device node or any
    other object is never replaced.
    """
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        if os.path.lexists(parent):
            raise PortPathError(f"cannot create {path}: {parent} is not a directory")
        raise PortPathError(f"cannot create {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PortPathError(f"cannot create {path}: directory {parent} is not writable")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        if replace_symlink or not os.path.exists(path):
            return
        target = os.readlink(path)
        raise PortPathError(f"{path} is a symlink to {target}, which exists; vcom replaces only links that lead "
                             "nowhere (remove it first if nothing uses it)")
    raise PortPathError(f"{path} is taken by {_kind_of(st.st_mode)}; choose another path")


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "another file"
