"""Seccomp user notification through ctypes: the kernel half of ``vcom wrap``.

A BPF filter, installed in the program before it starts, returns
``SECCOMP_RET_USER_NOTIF`` for ``ioctl`` with one of the terminal requests
the interposer answers (:data:`TRAPPED`) and lets every other system call
through inside the kernel.  The program then waits in that ioctl until the
supervisor answers on the listener fd: with a result it wrote into the
program's memory, or with ``SECCOMP_USER_NOTIF_FLAG_CONTINUE`` (run the call
as if nothing had intervened).  See seccomp_unotify(2).

Only the raw interfaces are here: building and installing the filter,
receiving and answering notifications, and reaching into the program
(``pidfd_getfd`` duplicates its fd without opening the pty again, so the
manager's inotify sees no extra open; ``process_vm_readv``/``writev`` move
the termios structs).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform
import select
import struct
import termios
from dataclasses import dataclass

from ..termio import TCGETS2, TCSETS2, TCSETSF2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# Requests the interposer answers (the same as preload.c).  termios2 forms are computed in vcom.termio.
TCSETSW2 = TCSETS2 + 1
TIOCSBRK = 0x5427  # not exported by the termios module (generic <asm-generic/ioctls.h> values)
TIOCCBRK = 0x5428
TIOCMIWAIT = getattr(termios, "TIOCMIWAIT", 0x545C)
TIOCGICOUNT = getattr(termios, "TIOCGICOUNT", 0x545D)
TRAPPED = (
    termios.TCGETS, termios.TCSETS, termios.TCSETSW, termios.TCSETSF, TCGETS2, TCSETS2, TCSETSW2, TCSETSF2,
    termios.TIOCMGET, termios.TIOCMSET, termios.TIOCMBIS, termios.TIOCMBIC, TIOCSBRK, TIOCCBRK, termios.TCSBRK,
    termios.TCSBRKP, TIOCMIWAIT, TIOCGICOUNT, termios.TIOCOUTQ, termios.TCFLSH,
)


@dataclass(frozen=True, slots=True)
class _Abi:
    audit_arch: int
    ioctl_nr: int


# The machine's own ABI, and the 32-bit one its kernel also runs (legacy serial programs often are).
_ABIS = {
    "x86_64": (_Abi(0xC000003E, 16), _Abi(0x40000003, 54)),
    "aarch64": (_Abi(0xC00000B7, 29), _Abi(0x40000028, 54)),
    "riscv64": (_Abi(0xC00000F3, 29),),
}
_SECCOMP_NR = {"x86_64": 317, "aarch64": 277, "riscv64": 277}
_IOCTLS = frozenset((abi.audit_arch, abi.ioctl_nr) for abi in _ABIS.get(platform.machine(), ()))
_PIDFD_GETFD = 438

PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
_RET_ALLOW = 0x7FFF0000
_RET_USER_NOTIF = 0x7FC00000
FLAG_CONTINUE = 1

# struct seccomp_notif (80 bytes) and seccomp_notif_resp (24 bytes), <linux/seccomp.h>.
_NOTIF = struct.Struct("=QII iIQ6Q")
_RESP = struct.Struct("=QqiI")
_IOC_READ_WRITE = 3


def _iowr(number: int, size: int) -> int:
    return (_IOC_READ_WRITE << 30) | (size << 16) | (ord("!") << 8) | number


NOTIF_RECV = _iowr(0, _NOTIF.size)
NOTIF_SEND = _iowr(1, _RESP.size)
NOTIF_ID_VALID = (1 << 30) | (8 << 16) | (ord("!") << 8) | 2
NOTIF_SET_FLAGS = (1 << 30) | (8 << 16) | (ord("!") << 8) | 4  # SECCOMP_IOW(4, __u64)
USER_NOTIF_FD_SYNC_WAKE_UP = 1

# Classic BPF opcodes.
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_RET_K = 0x06
_SOCK_FILTER = struct.Struct("=HBBI")


class SeccompError(OSError):
    pass


@dataclass(frozen=True, slots=True)
class Notification:
    id: int
    pid: int
    nr: int
    arch: int
    args: tuple[int, ...]

    @property
    def fd(self) -> int:
        return ctypes.c_int(self.args[0] & 0xFFFFFFFF).value

    @property
    def request(self) -> int:
        return self.args[1] & 0xFFFFFFFF  # the kernel takes ioctl's cmd as an unsigned int

    @property
    def arg(self) -> int:
        return self.args[2]


def is_ioctl(n: Notification) -> bool:
    """Whether ``n`` is an ioctl, the only call vcom's filter traps.  A listener handed to the manager by
    another process may come from a filter that traps other calls: those are not read as ioctls."""
    return (n.arch, n.nr) in _IOCTLS


def supported() -> bool:
    return platform.machine() in _ABIS


def filter_program(requests: tuple[int, ...] = TRAPPED) -> bytes:
    """The BPF program: notify for ioctl(fd, REQUEST, ...) with REQUEST in ``requests``, allow the rest."""
    abis = _ABIS[platform.machine()]
    args1_low = 16 + 8 + (0 if struct.pack("=H", 1)[0] == 1 else 4)  # seccomp_data.args[1], low 32 bits
    code: list[tuple] = [(_LD_W_ABS, 0, 0, 4)]  # seccomp_data.arch
    code += [("jeq", abi.audit_arch, f"abi{i}", "allow" if i == len(abis) - 1 else "next")
             for i, abi in enumerate(abis)]
    for i, abi in enumerate(abis):
        code += [("label", f"abi{i}"), (_LD_W_ABS, 0, 0, 0), ("jeq", abi.ioctl_nr, "check", "allow")]
    code += [("label", "check"), (_LD_W_ABS, 0, 0, args1_low)]
    code += [("jeq", request, "notify", "next") for request in requests]
    code += [("label", "allow"), (_RET_K, 0, 0, _RET_ALLOW), ("label", "notify"), (_RET_K, 0, 0, _RET_USER_NOTIF)]
    return _assemble(code)


def _assemble(code: list[tuple]) -> bytes:
    """Resolve labels into jump offsets; "next" is the following instruction."""
    labels: dict[str, int] = {}
    program: list[tuple] = []
    for item in code:
        if item[0] == "label":
            labels[item[1]] = len(program)
        else:
            program.append(item)
    out = bytearray()
    for position, item in enumerate(program):
        if item[0] != "jeq":
            out += _SOCK_FILTER.pack(*item)
            continue
        _, value, when_true, when_false = item
        jumps = []
        for label in (when_true, when_false):
            distance = 0 if label == "next" else labels[label] - position - 1
            if not 0 <= distance <= 255:
                raise ValueError("BPF jump out of range")
            jumps.append(distance)
        out += _SOCK_FILTER.pack(_JEQ_K, jumps[0], jumps[1], value)
    return bytes(out)


def install_filter(program: bytes, *, no_new_privs: bool) -> int:
    """Install ``program`` in this process (and all it will execute and start); returns the listener fd."""
    if no_new_privs and _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        _raise("prctl(PR_SET_NO_NEW_PRIVS)")
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("=HxxxxxxQ", len(program) // _SOCK_FILTER.size, ctypes.addressof(buffer))
    fprog_buffer = ctypes.create_string_buffer(fprog, len(fprog))
    fd = _libc.syscall(_SECCOMP_NR[platform.machine()], _SECCOMP_SET_MODE_FILTER,
                       _SECCOMP_FILTER_FLAG_NEW_LISTENER, fprog_buffer)
    if fd < 0:
        _raise("seccomp(SECCOMP_SET_MODE_FILTER)")
    return int(fd)


def wake_synchronously(listener: int) -> bool:
    """Have the kernel hand each notification straight from the program to the supervisor and the answer
    straight back, on the same CPU (SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP, Linux 6.6): a trapped call on a
    tty that is not a vcom port then costs about a third (`make bench`, the vcom wrap row).  The flag is
    the argument itself, not a pointer.  Older kernels refuse it (EINVAL), and calls go as before."""
    try:
        fcntl.ioctl(listener, NOTIF_SET_FLAGS, USER_NOTIF_FD_SYNC_WAKE_UP)
    except OSError:
        return False
    return True


def pending(poller: select.poll) -> bool | None:
    """Whether a notification waits on the listener that ``poller`` watches (NOTIF_RECV on an empty
    listener would block the caller); None: no process carries the filter any more."""
    events = sum(revents for _, revents in poller.poll(0))
    if events & select.POLLIN:
        return True
    return None if events & (select.POLLHUP | select.POLLERR) else False


def receive(listener: int) -> Notification | None:
    """One pending notification; None when it vanished meanwhile (the program was killed)."""
    buffer = bytearray(_NOTIF.size)  # the kernel insists on a zeroed buffer
    try:
        fcntl.ioctl(listener, NOTIF_RECV, buffer, True)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EINTR):
            return None
        raise
    nid, pid, _flags, nr, arch, _ip, *args = _NOTIF.unpack(buffer)
    return Notification(nid, pid, nr, arch, tuple(args))


def respond(listener: int, nid: int, *, value: int = 0, error: int = 0, cont: bool = False) -> None:
    """Answer notification ``nid``: ``error`` (an errno) or ``value``, or let the call run (``cont``).
    A program that was killed or interrupted meanwhile no longer waits: that is not an error."""
    response = _RESP.pack(nid, value, -error if error else 0, FLAG_CONTINUE if cont else 0)
    try:
        fcntl.ioctl(listener, NOTIF_SEND, response)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


def still_waiting(listener: int, nid: int) -> bool:
    """Whether notification ``nid`` is still pending: the pid it came from is still that program."""
    try:
        fcntl.ioctl(listener, NOTIF_ID_VALID, struct.pack("=Q", nid))
    except OSError:
        return False
    return True


def open_pidfd(pid: int) -> tuple[int, bool]:
    """A pidfd for the process of thread ``pid``, and whether ``pid`` is that process itself.

    A notification names the calling thread; pidfd_open takes a process, so a thread that is not the
    main one is looked up by its thread group."""
    try:
        return os.pidfd_open(pid), True
    except OSError as exc:
        group = _thread_group(pid) if exc.errno in (errno.EINVAL, errno.ENOENT) else pid
        if group == pid:
            raise
    return os.pidfd_open(group), False


class KeptPidfds:
    """Duplicates of the descriptors of one program's processes (``pidfd_getfd``), with a pidfd kept per
    process: opening and closing one for every trapped call was a third of the supervisor's time on a call
    it lets through.

    Only a process's own pid is kept, never a thread's: a pidfd names the process it was opened for, so
    when that process is gone (and its pid perhaps another's) the kept one fails (ESRCH, or EBADF while
    it is a zombie) and a new one is opened.  A thread id kept with its process's pidfd could come back
    as another process's pid while the first process lives, and name the wrong descriptors."""

    def __init__(self, limit: int = 64) -> None:
        self._kept: dict[int, int] = {}
        self._limit = limit

    def get_fd(self, pid: int, fd: int) -> int:
        kept = self._kept.get(pid)
        if kept is not None:
            try:
                return take_fd(kept, fd)
            except OSError:
                self._forget(pid)  # gone, or fd is not open there: a fresh pidfd tells which
        pidfd, own = open_pidfd(pid)
        try:
            local = take_fd(pidfd, fd)
        except OSError:
            os.close(pidfd)
            raise
        if not own:
            os.close(pidfd)
            return local
        if len(self._kept) >= self._limit:
            self.close()  # a program that starts many processes: the live ones are opened again
        self._kept[pid] = pidfd
        return local

    def _forget(self, pid: int) -> None:
        os.close(self._kept.pop(pid))

    def close(self) -> None:
        for pidfd in self._kept.values():
            os.close(pidfd)
        self._kept.clear()


def take_fd(pidfd: int, fd: int) -> int:
    """A duplicate of descriptor ``fd`` of the process behind ``pidfd`` (needs the ptrace right over it)."""
    local = _libc.syscall(_PIDFD_GETFD, pidfd, fd, 0)
    if local < 0:
        _raise("pidfd_getfd")
    return int(local)


def _thread_group(tid: int) -> int:
    try:
        with open(f"/proc/{tid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return tid


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc.process_vm_readv.restype = ctypes.c_ssize_t
_libc.process_vm_writev.restype = ctypes.c_ssize_t


def read_memory(pid: int, address: int, size: int) -> bytes:
    buffer = ctypes.create_string_buffer(size)
    local = _Iovec(ctypes.addressof(buffer), size)
    remote = _Iovec(address, size)
    done = _libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if done != size:
        _raise("process_vm_readv", errno.EFAULT)
    return buffer.raw


def write_memory(pid: int, address: int, data: bytes) -> None:
    buffer = ctypes.create_string_buffer(data, len(data))
    local = _Iovec(ctypes.addressof(buffer), len(data))
    remote = _Iovec(address, len(data))
    done = _libc.process_vm_writev(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if done != len(data):
        _raise("process_vm_writev", errno.EFAULT)


def set_child_subreaper() -> None:
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _raise(what: str, default: int = errno.EIO) -> None:
    code = ctypes.get_errno() or default
    raise SeccompError(code, f"{what}: {os.strerror(code)}")
