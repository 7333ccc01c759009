"""What the manager does for a member of group vcom: only what the member could do itself.

The system manager runs as root, and its control socket admits members of group vcom.  Without
these checks, membership would be root's power over every path the manager touches:

* a port is a symlink the manager makes: in ``/etc/profile.d`` it would lead root's next login
  shell to read commands from a pty that the member's own server fills;
* a share opens a terminal device and serves it on the network: another user's ``/dev/pts/N``
  would hand the member that user's keystrokes, and so would the member's own pty once its number
  goes to the next login (a share opens its device again whenever it comes back);
* a TLS key the manager reads would sign handshakes to the member's server as the machine (a
  root-only key in ``/etc/ssl/private``).

So, for a caller that is neither root nor the manager's own user:

* a port is made only in ``/dev`` itself (``/dev/ttyV0``: what the group is for), a directory no
  member may change between the check and the symlink, and replaces a dangling link there only if a
  port left it (it leads into ``/dev/pts``);
* a device is shared only by a path under ``/dev`` that the member cannot change (in the same
  sense: not through a link of theirs in ``/dev/shm``), only if the member may
  open it for reading and writing, and only if it is no login session's terminal (a pty, a virtual
  console, ``/dev/tty``, the console);
* a TLS file is used only if the member may read it and cannot put another file in its place (in
  no directory on its path, through every link, may the member replace the entry the path goes
  through): ``vcom reload`` reads it again by that path;
* a port is monitored or removed, and a device unshared, only if the member may open its tty (the
  port's pty: the member's own ports, and root's if the member is in their group, dialout).

The kernel decides each, as the caller: a child of the manager takes the caller's user, group and
supplementary groups and asks (access(2), stat(2)), so modes, ACLs (a logged-in user's uaccess on a
USB adapter) and the directories on the way all count.  The child runs while the event loop goes
on, bounded in time (a path on a hung network file system is refused, not waited for).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from .portpath import PORT_DIRECTORY

CHECK_TIMEOUT = 5.0
_SESSION_TTY_MAJORS = frozenset({5, *range(136, 144)})  # /dev/tty, console, ptmx; pty slaves
_VT_MAJOR, _FIRST_SERIAL_MINOR = 4, 64  # major 4: tty0-63 are virtual consoles, ttyS0 and up are UARTs


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a control request (SO_PEERCRED), and the supplementary groups its process has."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    @property
    def unrestricted(self) -> bool:
        """Root, and the manager's own user, may ask for anything the manager may do."""
        return self.uid in (0, os.geteuid())


async def refusal(caller: Caller, *, ports: Iterable[str] = (), tls_files: Iterable[tuple[str, str]] = (),
                  devices: Iterable[str] = (), uses: Iterable[tuple[str, str, str]] = ()) -> str | None:
    """Why the manager will not make these ports, read these TLS files ((option, path)), share these devices
    or act on these ports and shares ((verb, name, tty): monitor a port, remove it, unshare a device, which
    needs the tty to be the member's to open) for ``caller`` (the first reason), or None."""
    if caller.unrestricted:
        return None
    for device in ports:
        parent = os.path.dirname(os.path.abspath(device))
        if parent != PORT_DIRECTORY:
            return (f"cannot create {device}: the manager makes a port for a member of group vcom only in "
                    f"{PORT_DIRECTORY} (such as {PORT_DIRECTORY}/ttyV0); a manager of your own makes it anywhere")
        left = _link_target(device)
        if left is not None and not left.startswith("/dev/pts/"):
            # A link that leads nowhere may be replaced by a port (check_port_path): for a member, only one
            # that a port left behind, not a system name whose device is away (/dev/cdrom).
            return (f"cannot create {device}: it is a link to {left}, and the manager replaces a link for a member "
                    "of group vcom only when a port left it behind (a link into /dev/pts)")
    needs = [("tls", option, path) for option, path in tls_files] + [("device", "", path) for path in devices]
    needs += [(f"use:{verb}", name, tty) for verb, name, tty in uses]
    if not needs:
        return None
    return await _judged_as(caller, needs)


def _link_target(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None  # not a link, or nothing there


def _verdict(kind: str, option: str, path: str) -> str | None:
    """One need, judged in the child with the caller's ids."""
    if kind.startswith("use:"):
        if os.access(path, os.R_OK | os.W_OK):
            return None
        return (f"cannot {kind.removeprefix('use:')} {option}: you may not open it for reading and writing, and "
                "the manager does that for a member of group vcom only if the member may")
    if kind == "tls":
        return _tls_verdict(option, path)
    return _device_verdict(path)


def _tls_verdict(option: str, path: str) -> str | None:
    if not os.access(path, os.R_OK):
        return (f"{option} {path}: you may not read it, and the manager uses a TLS file for a member of group "
                "vcom only if the member may read it")
    changeable = _changeable(path)
    if changeable is not None:
        # `vcom reload` reads the file again by its path: what stands there then must still be this one.
        return (f"{option} {path}: you may change {changeable}, and the manager uses a TLS file for a member of "
                "group vcom only where the member cannot put another file in its place")
    return None


def _device_verdict(path: str) -> str | None:
    refused = f"cannot share {path}: "
    for named in (path, os.path.realpath(path)):
        if not named.startswith(PORT_DIRECTORY + "/"):
            return refused + f"the manager shares for a member of group vcom only a device under {PORT_DIRECTORY}"
    changeable = _changeable(path)
    if changeable is not None:
        # The share opens the device again by its path whenever it comes back.
        return refused + (f"you may change {changeable}, and the manager shares for a member of group vcom only "
                          "by a path the member cannot change")
    try:
        st = os.stat(path)
    except OSError as exc:
        return refused + (exc.strerror or str(exc)).lower()
    if not stat.S_ISCHR(st.st_mode):
        return refused + "it is not a terminal device"
    if not os.access(path, os.R_OK | os.W_OK):
        return refused + ("you may not open it for reading and writing, and the manager shares for a member of "
                          "group vcom only what the member may use")
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    if major in _SESSION_TTY_MAJORS or (major == _VT_MAJOR and minor < _FIRST_SERIAL_MINOR):
        return refused + ("it is the terminal of a login session (a pty or a console), which the manager does "
                          "not share for a member of group vcom")
    return None


def _changeable(path: str) -> str | None:
    """The first directory that decides what ``path`` leads to (through every symbolic link on the way)
    in which this process may replace the entry that the path goes through; None when there is none.  In
    a sticky directory (/tmp) only the owner of an entry, or of the directory, may replace it."""
    uid = os.getuid()
    for directory, entry in _entries_on(path):
        if not os.access(directory, os.W_OK):
            continue
        try:
            held = os.stat(directory)
            named = os.lstat(os.path.join(directory, entry))
        except OSError:
            return directory
        if not held.st_mode & stat.S_ISVTX or uid in (held.st_uid, named.st_uid):
            return directory
    return None


def _entries_on(path: str, hops: int = 40) -> list[tuple[str, str]]:
    """Every (directory, entry) that decides what ``path`` leads to: each component in its parent, and
    the components of each symbolic link's target, as the kernel follows them (at most ``hops`` links)."""
    found: list[tuple[str, str]] = []
    pending = os.path.abspath(path)
    for _ in range(hops):
        parts = [part for part in pending.split("/") if part not in ("", ".")]
        current = "/"
        for index, part in enumerate(parts):
            if part == "..":
                current = os.path.dirname(current)  # the kernel's "..": of the directory reached, not lexical
                continue
            if (current, part) not in found:
                found.append((current, part))
            step = os.path.join(current, part)
            if os.path.islink(step):
                target = os.readlink(step)
                rest = "/".join(parts[index + 1:])
                base = target if target.startswith("/") else os.path.join(current, target)
                pending = os.path.join(base, rest) if rest else base
                break
            current = step
        else:
            return found
    return found


async def _judged_as(caller: Caller, needs: list[tuple[str, str, str]]) -> str | None:
    """The first refusal among ``needs``, judged in a child that has the caller's ids."""
    loop = asyncio.get_running_loop()
    paths = ", ".join(path for _, _, path in needs)
    read_end, write_end = os.pipe()
    # Signals stay blocked in the child: a handler of the manager's must never run there (its wake-up
    # descriptor is the manager's own).  SIGKILL, the only one sent to it, cannot be blocked.
    kept = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(read_end)
        os.close(write_end)
        return f"the manager could not check whether you may use {paths} ({exc.strerror}); refused"
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, kept)
    if pid == 0:  # the child: never back into the manager's loop
        code = 1
        try:
            os.close(read_end)
            os.write(write_end, _judge(caller, needs, paths))
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    answer = bytearray()
    done = loop.create_future()

    def readable() -> None:
        chunk = os.read(read_end, 65536)
        answer.extend(chunk)
        if not chunk and not done.done():
            done.set_result(None)

    loop.add_reader(read_end, readable)
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await done
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    finally:
        loop.remove_reader(read_end)
        os.close(read_end)
        _reap(loop, pid)
    if answer == b"ok":
        return None
    if answer.startswith(b"no:"):
        return answer[3:].decode(errors="replace")
    return f"the manager could not tell within {CHECK_TIMEOUT:g} s whether you may use {paths}; refused"


def _judge(caller: Caller, needs: list[tuple[str, str, str]], paths: str) -> bytes:
    """In the child: become the caller and judge; ``ok``, or ``no:`` and the reason."""
    try:
        os.setgroups(list(caller.groups))
        os.setresgid(caller.gid, caller.gid, caller.gid)
        os.setresuid(caller.uid, caller.uid, caller.uid)
        first = next((found for need in needs if (found := _verdict(*need)) is not None), None)
    except Exception as exc:  # noqa: BLE001 - a manager that cannot become the caller (not root) refuses
        return f"no:the manager could not check as you whether you may use {paths} ({exc}); refused".encode()
    return b"ok" if first is None else b"no:" + first.encode()


def _reap(loop: asyncio.AbstractEventLoop, pid: int, tries: int = 60) -> None:
    """Collect the child without blocking the loop: one killed while stuck in the kernel (a hung mount)
    exits only when the kernel lets it."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return
    if done == 0 and tries > 0:
        loop.call_later(1.0, _reap, loop, pid, tries - 1)
