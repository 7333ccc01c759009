"""Whether a path may become a port's symlink: checked by the CLI before anything is started, and by
the manager before it creates the pty.  Kept apart from :mod:`vcom.pty` so that the check costs a
``vcom`` command no termios imports."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

# Where the system manager makes the ports of a member of group vcom (vcom.onbehalf): the system's device
# names, a directory no member may write to.
PORT_DIRECTORY = "/dev"


class PortPathError(Exception):
    """The port's path or ownership cannot be used; the message is one line."""


class NotWritable(PortPathError):
    """The port's directory is not writable by this process."""


def check_port_path(path: str, *, replace_symlink: bool, writable: bool = True) -> None:
    """Raise PortPathError unless ``path`` may become the port's symlink.

    The parent must be a directory, writable by this process unless ``writable`` is False (a command
    asking a manager that runs as another user, which checks for itself).  ``path`` may be absent or a
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
    if writable and not os.access(parent, os.W_OK | os.X_OK):
        raise NotWritable(f"cannot create {path}: directory {parent} is not writable")
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


def directory_identity(path: str) -> list[int] | None:
    """The device and inode numbers of the directory that would hold ``path`` (None: there is none), as
    this process sees it: `vcom add` sends them along, and the manager compares them with its own."""
    return file_identity(os.path.dirname(os.path.abspath(path)))


def check_same_directory(path: str, seen: object) -> None:
    """Raise PortPathError when the directory that would hold ``path`` is not the one the client saw
    (``seen``: its directory_identity).  A manager in a mount namespace of its own (systemd's
    PrivateTmp= gives it another /tmp, ProtectHome= an empty /home) would otherwise make the port where
    nobody else can see it, and `vcom add` would report success."""
    if seen is None:
        return
    if not _is_identity(seen):
        raise PortPathError(f"cannot create {path}: the request names its directory wrongly")
    if directory_identity(path) != seen:
        parent = os.path.dirname(os.path.abspath(path))
        raise PortPathError(f"cannot create {path}: the manager does not see the {parent} you see (it runs in a "
                            "mount namespace of its own, e.g. systemd's PrivateTmp= or ProtectHome=); "
                            "choose a path under /dev, such as /dev/ttyV0")


# What to do about a file that only the client sees, by what the file is for.
TLS_ADVICE = ("keep TLS files where the manager sees them, such as /etc/vcom, or hand them to the unit with "
              "LoadCredential=")
DEVICE_ADVICE = "name the device by its path under /dev"


def file_identity(path: str) -> list[int] | None:
    """The device and inode numbers of the file ``path`` leads to, as this process sees it (None: it cannot
    tell, e.g. a directory on the way that it may not search)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino]


def files_seen(paths: Iterable[str | None]) -> dict[str, list[int]]:
    """The identities of the files a request names, as the client sees them (those it can tell)."""
    return {path: found for path in paths if path and (found := file_identity(path)) is not None}


def check_same_file(label: str, path: str | None, seen: object, advice: str) -> None:
    """Raise PortPathError when the file ``path`` (a TLS file, a shared device) is not the one the client
    saw (``seen``: :func:`files_seen` of the request).  Under systemd's PrivateTmp= or ProtectHome= the
    manager found no such file and said so, while the client could see it; now it says why.  A path the
    client could not tell is not checked."""
    if not path or not isinstance(seen, dict) or path not in seen:
        return
    identity = seen[path]
    if not _is_identity(identity):
        raise PortPathError(f"{label} {path}: the request names the file wrongly")
    if file_identity(path) != identity:
        raise PortPathError(f"{label} {path}: the manager does not see the file you see (it runs in a mount "
                            f"namespace of its own, e.g. systemd's PrivateTmp= or ProtectHome=); {advice}")


def _is_identity(value: object) -> bool:
    """Whether a control request's ``value`` is a file_identity: [device, inode]."""
    return isinstance(value, list) and len(value) == 2 and all(type(n) is int for n in value)


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
