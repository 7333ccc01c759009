"""``vcom wrap``: run a program under seccomp user notification and answer its terminal ioctls.

The program is started as a child of this process with the filter of
:mod:`.seccomp` installed, so that every process it starts, dynamically or
statically linked, carries it too.  This process is the supervisor: for each
trapped ioctl it looks at the fd (a duplicate taken with ``pidfd_getfd``);
on a vcom port (the tag in its termios) it asks the manager as the preload
library does and writes the answer into the program's memory; on anything
else, or when the manager does not answer, it lets the call run in the kernel
unchanged.  A TCGETS whose pty termios it has seen before is answered from the
views it kept (:mod:`.viewcache`, exact by the manager's notices).  Each
notification is its own task, so a TIOCMIWAIT that waits for a modem line does
not hold up the program's other threads.

The supervisor is a subreaper and stays as long as any process carrying the
filter lives (the listener reports POLLHUP when the last one has gone): a
daemon started under ``vcom wrap`` keeps it running, because its ioctls
would fail with ENOSYS without it.  It returns the program's exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import signal
import socket
import stat
import struct
import termios
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from ..termio import TCGETS2, TCSETS2, TCSETSF2, TERMIOS2_SIZE, TERMIOS_SIZE, Termios2, get_termios2
from . import protocol, seccomp
from .seccomp import TCSETSW2, TIOCCBRK, TIOCGICOUNT, TIOCMIWAIT, TIOCSBRK, Notification
from .viewcache import ViewCache

_PTY_SLAVE_MAJORS = range(136, 144)  # Unix98 pty slaves (Documentation/admin-guide/devices.txt)
_ANSWER_TIMEOUT = 5.0
_SET_MODES = {termios.TCSETS: "now", termios.TCSETSW: "drain", termios.TCSETSF: "flush",
              TCSETS2: "now", TCSETSW2: "drain", TCSETSF2: "flush"}
_OLD_STRUCT = (termios.TCGETS, termios.TCSETS, termios.TCSETSW, termios.TCSETSF)
_MODEM_OPS = {termios.TIOCMGET: "get", termios.TIOCMSET: "set", termios.TIOCMBIS: "bis", termios.TIOCMBIC: "bic"}
_ICOUNT = struct.Struct("=20i")  # struct serial_icounter_struct: 11 counters and 9 reserved


class WrapError(Exception):
    """The program cannot be started under the supervisor; one-line reason.  ``unavailable``: seccomp
    itself cannot be used here (LD_PRELOAD may still serve), rather than the program failing to start."""

    def __init__(self, message: str, *, unavailable: bool = False) -> None:
        super().__init__(message)
        self.unavailable = unavailable


class _Continue(Exception):
    """Let the kernel run the call as the program made it."""


def spawn(program: list[str], env: dict[str, str]) -> tuple[int, int]:
    """Start ``program`` with the filter installed; (pid, listener fd).  WrapError when seccomp is not
    available here (the caller may fall back) or the program cannot be executed."""
    if not seccomp.supported():
        raise WrapError(f"seccomp user notification is not supported on {os.uname().machine}", unavailable=True)
    bpf = seccomp.filter_program()
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the child: install the filter, hand its listener over, become the program
        try:
            parent_sock.close()
            os.close(report_r)
            try:
                listener = seccomp.install_filter(bpf, no_new_privs=os.geteuid() != 0)
            except OSError as exc:
                os.write(report_w, f"filter {exc.strerror}".encode())
                os._exit(126)
            socket.send_fds(child_sock, [b"L"], [listener])
            os.close(listener)
            child_sock.close()
            default_signals()
            try:
                os.execvpe(program[0], program, env)
            except OSError as exc:
                os.write(report_w, f"exec {exc.strerror}".encode())
            os._exit(127)
        except BaseException:
            os._exit(127)
    child_sock.close()
    os.close(report_w)
    with os.fdopen(report_r, "rb") as report:
        problem = report.read().decode(errors="replace")  # EOF at the exec: it succeeded
    listener = -1
    with contextlib.suppress(OSError):
        _, fds, _, _ = socket.recv_fds(parent_sock, 1, 1)
        listener = fds[0] if fds else -1
    parent_sock.close()
    if problem:
        os.waitpid(pid, 0)
        if listener >= 0:
            os.close(listener)
        kind, _, reason = problem.partition(" ")
        if kind == "filter":
            raise WrapError(f"cannot install the seccomp filter: {reason}", unavailable=True)
        raise WrapError(f"cannot run {program[0]}: {reason}")
    return pid, listener


def default_signals() -> None:
    """Python ignores SIGPIPE and SIGXFSZ; a program started from it must not inherit that (it would get
    EPIPE where it expects to be stopped by SIGPIPE, as `yes | head` relies on), nor signals held back."""
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


_FORWARDED = (signal.SIGTERM, signal.SIGHUP)


def run(program: list[str], env: dict[str, str], socket_path: Path) -> int:
    """Run ``program`` under the supervisor; its exit status (128 + signal when killed)."""
    seccomp.set_child_subreaper()
    # A SIGTERM that comes before the supervisor listens for it must still reach the program, not end the
    # supervisor: held back until serve() handles it (the program starts with nothing held back).
    signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
    pid, listener = spawn(program, env)
    seccomp.wake_synchronously(listener)
    return asyncio.run(Supervisor(listener, pid, socket_path).serve())


class Supervisor:
    def __init__(self, listener: int, child: int, socket_path: Path) -> None:
        self._listener = listener
        self._child = child
        self._connections = _Connections(str(socket_path))
        self._views = ViewCache(str(socket_path), child)
        self._status: int | None = None
        self._done: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._poller = select.poll()
        self._poller.register(listener, select.POLLIN)

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        # Terminal signals reach the program from the terminal itself; the ones sent to us are passed on.
        for sig in (signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_IGN)
        for sig in _FORWARDED:
            loop.add_signal_handler(sig, self._forward, sig)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)  # what came meanwhile is handled now
        loop.add_signal_handler(signal.SIGCHLD, self._reap)
        loop.add_reader(self._listener, self._on_listener)
        self._reap()
        try:
            await self._done.wait()
        finally:
            loop.remove_reader(self._listener)
            os.close(self._listener)
            for task in list(self._tasks):
                task.cancel()
            self._connections.close()
            self._views.close()
        while self._status is None:  # the listener is done: the program has exited or is about to
            await asyncio.sleep(0.01)
            self._reap()
        return self._status

    def _forward(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._child, sig)

    def _reap(self) -> None:
        # As subreaper we also collect the program's orphans.
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self._child:
                self._status = os.waitstatus_to_exitcode(status)
                if self._status < 0:
                    self._status = 128 - self._status

    def _on_listener(self) -> None:
        events = sum(revents for _, revents in self._poller.poll(0))
        if not events & select.POLLIN:
            if events & (select.POLLHUP | select.POLLERR):
                assert self._done is not None
                self._done.set()  # no process carries the filter any more
            return
        notification = seccomp.receive(self._listener)
        if notification is None:
            return
        # What needs no manager is answered here, at once: a call on a tty that is not a vcom port, and a
        # TCGETS from a kept view.  Only a call that asks the manager becomes a task (each its own: a
        # TIOCMIWAIT that waits for a modem line must not hold up the program's other threads).
        asking = self._start(notification)
        if asking is not None:
            task = asyncio.get_running_loop().create_task(asking)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _start(self, n: Notification) -> Coroutine[Any, Any, None] | None:
        """Answer ``n`` if no manager is needed; else the coroutine that asks it and answers."""
        try:
            local = seccomp.get_fd(n.pid, n.fd)
        except OSError:
            self._respond(n, cont=True)
            return None
        try:
            found = _vcom_port(local)
            if found is None:
                self._respond(n, cont=True)
            elif n.request in (termios.TCGETS, TCGETS2) and self._tcgets_kept(n, *found):
                self._respond(n, value=0)
            else:
                owned, local = local, -1  # the coroutine closes it
                return self._handle(n, owned, found[0])
        except _Continue:
            self._respond(n, cont=True)
        except OSError as exc:
            self._respond(n, error=exc.errno or errno.EIO)
        finally:
            if local >= 0:
                os.close(local)
        return None

    async def _handle(self, n: Notification, local: int, rdev: int) -> None:
        try:
            if n.request in (termios.TCGETS, TCGETS2):
                value = await self._tcgets(n, rdev)
            else:
                value = await self._emulate(n, rdev)
        except _Continue:
            self._respond(n, cont=True)
        except OSError as exc:
            self._respond(n, error=exc.errno or errno.EIO)
        else:
            self._respond(n, value=value)
        finally:
            os.close(local)  # held until the answer: the manager checks that the asker has the port open

    def _respond(self, n: Notification, *, value: int = 0, error: int = 0, cont: bool = False) -> None:
        seccomp.respond(self._listener, n.id, value=value, error=error, cont=cont)

    def _tcgets_kept(self, n: Notification, rdev: int, pty: Termios2) -> bool:
        """TCGETS and TCGETS2 from the views kept here, when the pty's termios is one seen before."""
        view = self._views.lookup(rdev, pty)
        if view is None:
            return False
        self._write(n, n.arg, view.pack_termios() if n.request == termios.TCGETS else view.pack())
        return True

    async def _tcgets(self, n: Notification, rdev: int) -> int:
        """TCGETS and TCGETS2 that no kept view answers: the manager's view, kept for the next one."""
        view = self._keep(rdev, await self._ask(n, "view", rdev))
        self._write(n, n.arg, view.pack_termios() if n.request == termios.TCGETS else view.pack())
        return 0

    def _keep(self, rdev: int, answer: tuple[str, ...]) -> Termios2:
        """The view in a "view" answer (or a tcsets one), kept for the next TCGETS."""
        try:
            generation, view, made_from = int(answer[0]), *(Termios2.unpack(bytes.fromhex(v)) for v in answer[1:3])
        except (ValueError, IndexError, struct.error):
            raise _Continue from None  # a manager that answers otherwise: the kernel has the call
        self._views.keep(rdev, generation, view, made_from)
        return view

    async def _emulate(self, n: Notification, rdev: int) -> int:
        request, arg = n.request, n.arg
        if request in _SET_MODES:
            size = TERMIOS_SIZE if request in _OLD_STRUCT else TERMIOS2_SIZE
            raw = seccomp.read_memory(n.pid, arg, size)
            if not seccomp.still_waiting(self._listener, n.id):
                raise _Continue  # what was read may belong to another process by now
            # Our watch is not told of this change: the answer's view is what we keep (viewcache).
            with self._views.changing(rdev):
                answer = await self._ask(n, "tcsets", rdev, _SET_MODES[request], raw.hex(), "view", timeout=None)
                try:
                    self._keep(rdev, answer)
                except _Continue:  # the change is made: a view that cannot be kept is no error
                    self._views.forget(rdev)
        elif request in _MODEM_OPS:
            op = _MODEM_OPS[request]
            bits = 0 if op == "get" else struct.unpack("=i", seccomp.read_memory(n.pid, arg, 4))[0]
            answer = await self._ask(n, "modem", rdev, op, bits, timeout=_ANSWER_TIMEOUT if op == "get" else None)
            if op == "get":
                self._write(n, arg, struct.pack("=i", int(answer[0])))
        elif request in (TIOCSBRK, TIOCCBRK):
            await self._ask(n, "break", rdev, "on" if request == TIOCSBRK else "off", timeout=None)
        elif request == termios.TCSBRK:
            if arg != 0:  # tcdrain()
                await self._ask(n, "drain", rdev, timeout=None)
            else:
                await self._ask(n, "break", rdev, "pulse", 250, timeout=None)
        elif request == termios.TCFLSH:
            if arg not in (termios.TCIFLUSH, termios.TCOFLUSH, termios.TCIOFLUSH):
                raise OSError(errno.EINVAL, "bad queue")
            await self._ask(n, "flush", rdev, ("in", "out", "both")[arg])
        elif request == termios.TIOCOUTQ:
            queued = int((await self._ask(n, "outq", rdev))[0])
            self._write(n, arg, struct.pack("=i", queued))
        elif request == termios.TCSBRKP:
            ms = min(arg * 100, protocol.MAX_BREAK_MS) if arg > 0 else 250
            await self._ask(n, "break", rdev, "pulse", ms, timeout=None)
        elif request == TIOCMIWAIT:
            await self._ask(n, "miwait", rdev, arg & 0xFFFFFFFF, timeout=None)
        elif request == TIOCGICOUNT:
            counts = [int(v) for v in await self._ask(n, "icount", rdev)]
            self._write(n, arg, _ICOUNT.pack(*counts[:11], *([0] * 9)))
        else:
            raise _Continue
        return 0

    def _write(self, n: Notification, address: int, data: bytes) -> None:
        if not seccomp.still_waiting(self._listener, n.id):
            raise _Continue  # the pid is no longer that program: never write into another process
        seccomp.write_memory(n.pid, address, data)

    async def _ask(self, n: Notification, verb: str, rdev: int, *args: object,
                   timeout: float | None = _ANSWER_TIMEOUT) -> tuple[str, ...]:
        """One request to the manager; the answer's values.  No manager or "no": the kernel has the call.
        ``timeout`` None: a change waits as long as the manager takes (it answers once the bytes written
        before it have left); reads of state are bounded, so a stuck manager cannot hang a program."""
        try:
            line = await self._connections.ask(n.pid, protocol.request(verb, rdev, *args), timeout)
            answer = protocol.parse_answer(line)
        except (OSError, TimeoutError, ValueError):  # ValueError: ProtocolError, or a line past the limit
            raise _Continue from None
        if answer.status == "no":
            raise _Continue
        if answer.status == "err":
            raise OSError(answer.errno, os.strerror(answer.errno))
        return answer.values


class _Connections:
    """Connections to the manager, kept per calling thread (a notification names the thread, and the
    header names it to the manager): a request takes an idle one or makes one, and gives it back once
    answered, so a call costs a line each way rather than a connection.  A request that waits
    (TIOCMIWAIT) holds its own meanwhile: the program's other threads are not queued behind it.  Anything
    out of the ordinary (a timeout, a cancel, a broken line) closes the connection: an answer still on
    its way must never be read as the answer to the next request."""

    _IDLE_MAX = 8  # idle connections kept in all; past this the longest unused go (a burst of threads)

    def __init__(self, path: str) -> None:
        self._path = path
        self._idle: dict[int, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}
        self._count = 0

    async def ask(self, pid: int, request: bytes, timeout: float | None) -> bytes:
        """The answer line; b"" when the manager closed the connection without one."""
        for _ in range(2):
            pooled = self._take(pid)
            if pooled is None:
                reader, writer = await asyncio.open_unix_connection(self._path, limit=protocol.MAX_LINE * 2)
                writer.write(protocol.header("seccomp", pid))
            else:
                reader, writer = pooled
            whole = False
            try:
                writer.write(request)
                async with asyncio.timeout(timeout):
                    line = await reader.readline()
                whole = line.endswith(b"\n")
                if not line and pooled is not None:
                    continue  # the manager had closed it (idle too long, or restarted): once more on a new one
                return line
            finally:
                if whole:
                    self._give_back(pid, reader, writer)
                else:
                    writer.close()
        return b""

    def _take(self, pid: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        kept = self._idle.get(pid)
        if not kept:
            return None
        self._count -= 1
        pooled = kept.pop()
        if not kept:
            del self._idle[pid]
        return pooled

    def _give_back(self, pid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        kept = self._idle.pop(pid, [])
        kept.append((reader, writer))
        self._idle[pid] = kept  # now the most recently used
        self._count += 1
        while self._count > self._IDLE_MAX:
            oldest = next(iter(self._idle))
            _, old = self._idle[oldest].pop(0)
            if not self._idle[oldest]:
                del self._idle[oldest]
            self._count -= 1
            old.close()

    def close(self) -> None:
        for kept in self._idle.values():
            for _, writer in kept:
                writer.close()
        self._idle.clear()
        self._count = 0


def _vcom_port(fd: int) -> tuple[int, Termios2] | None:
    """The device number and termios of ``fd`` if it is a vcom port (a pty slave whose termios carries the
    tag)."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISCHR(st.st_mode) or os.major(st.st_rdev) not in _PTY_SLAVE_MAJORS:
            return None
        current = get_termios2(fd)
        return (st.st_rdev, current) if current.tagged else None
    except OSError:
        return None
