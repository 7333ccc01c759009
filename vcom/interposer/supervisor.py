"""``vcom wrap``: run a program under seccomp user notification and answer its terminal ioctls.

The program is started as a child of this process with the filter of
:mod:`.seccomp` installed, so that every process it starts, dynamically or
statically linked, carries it too.  This process is the supervisor: for each
trapped ioctl it looks at the fd (a duplicate taken with ``pidfd_getfd``);
on a vcom port (the tag in its termios) it asks the manager as the preload
library does and writes the answer into the program's memory; on anything
else, or when the manager does not answer, it lets the call run in the kernel
unchanged.  A TCGETS whose pty termios it has seen before is answered from the
views it kept (:mod:`.viewcache`, exact by the manager's notices).  How a call
becomes requests is :mod:`.calls`, shared with the manager.

Once the manager has answered a call on one of its ports, the supervisor hands
it the listener (:mod:`.handoff`): the manager then answers the calls in its own
loop, a process wake-up fewer per call, and the supervisor only watches.  When
the manager goes, the supervisor answers what it held and reads the listener
itself again, until a manager takes it anew.

The supervisor is a subreaper and stays as long as any process carrying the
filter lives (the listener reports POLLHUP when the last one has gone): a
daemon started under ``vcom wrap`` keeps it running, because its ioctls
would fail with ENOSYS without it.  It returns the program's exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import stat
import struct
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from ..termio import Termios2, get_termios2
from . import handoff, protocol, seccomp
from .calls import ANSWER_TIMEOUT, Asking, CallAnswerer, Continue
from .seccomp import Notification
from .viewcache import ViewCache

_HANDOFF_RETRY = 5.0  # seconds before a handoff that failed or ended is tried again
_HANDOFF_REFUSED_RETRY = 60.0  # ... and one the manager refused


class WrapError(Exception):
    """The program cannot be started under the supervisor; one-line reason.  ``unavailable``: seccomp
    itself cannot be used here (LD_PRELOAD may still serve), rather than the program failing to start."""

    def __init__(self, message: str, *, unavailable: bool = False) -> None:
        super().__init__(message)
        self.unavailable = unavailable


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


class Supervisor(CallAnswerer):
    """Answers the program's trapped calls by asking the manager; hands the listener to the manager once
    the manager has answered a call on one of its ports, and takes it back when the manager goes
    (:mod:`.handoff`)."""

    def __init__(self, listener: int, child: int, socket_path: Path) -> None:
        super().__init__(listener)
        self._child = child
        self._path = str(socket_path)
        self._connections = _Connections(self._path)
        self._views = ViewCache(self._path, child)
        self._pidfds = seccomp.KeptPidfds()
        self._status: int | None = None
        self._done: asyncio.Event | None = None
        self._poller = select.poll()
        self._poller.register(listener, select.POLLIN)
        self._reading = False
        self._highest = 0  # the highest notification id received here
        self._held_fd, self._held = handoff.held_page()
        self._handed: asyncio.StreamWriter | None = None  # the connection to a manager that holds the listener
        self._hangup: select.epoll | None = None
        self._next_handoff = 0.0
        self._handing = False

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
        self._read()
        self._reap()
        try:
            await self._done.wait()
        finally:
            self._unread()
            self._watch_hangup(False)
            if self._handed is not None:
                self._handed.close()
            os.close(self.listener)
            self.cancel()
            self._connections.close()
            self._views.close()
            self._pidfds.close()
            self._held.close()
            os.close(self._held_fd)
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

    def _read(self) -> None:
        if not self._reading:
            asyncio.get_running_loop().add_reader(self.listener, self._on_listener)
            self._reading = True

    def _unread(self) -> None:
        if self._reading:
            asyncio.get_running_loop().remove_reader(self.listener)
            self._reading = False

    def _on_listener(self) -> None:
        # As the manager does (handoff.Handed.readable): the program's next call, often waiting already.
        for _ in range(handoff.DRAIN):
            if not self._reading or not self._receive_one():
                return

    def _receive_one(self) -> bool:
        waiting = seccomp.pending(self._poller)
        if not waiting:
            if waiting is None:
                self._program_gone()
            return False
        notification = seccomp.receive(self.listener)
        if notification is None:
            return True
        self._highest = notification.id
        self.on_notification(notification)
        return True

    def _program_gone(self) -> None:
        assert self._done is not None
        self._done.set()

    # -- CallAnswerer: asking the manager over the interposer socket ---------------------------------------

    def locate(self, n: Notification) -> tuple[int, Any, int] | None:
        try:
            local = self._pidfds.get_fd(n.pid, n.fd)
        except OSError:
            raise Continue from None
        found = _vcom_port(local)
        if found is None:
            os.close(local)
            return None
        return found[0], found[1], local

    def answer_kept_tcgets(self, n: Notification, rdev: int, found: Any) -> bool:
        """TCGETS and TCGETS2 from the views kept here, when the pty's termios is one seen before."""
        view = self._views.lookup(rdev, found)
        if view is None:
            return False
        self.write_view(n, view.pack())
        return True

    def tcgets_asking(self, n: Notification, rdev: int) -> Asking:
        """TCGETS and TCGETS2 that no kept view answers: the manager's view, kept for the next one."""
        return Asking("view", then=lambda answer: self.write_view(n, self._keep(rdev, answer).pack()))

    def tcsets_asking(self, n: Notification, rdev: int, mode: str, raw: bytes) -> Asking:
        def keep(answer: tuple[str, ...]) -> None:
            try:
                self._keep(rdev, answer)
            except Continue:  # the change is made: a view that cannot be kept is no error
                self._views.forget(rdev)

        return Asking("tcsets", (mode, raw.hex(), "view"), timeout=None, then=keep)

    def settle(self, n: Notification, rdev: int, asking: Asking) -> Coroutine[Any, Any, None]:
        return self._ask_manager(n, rdev, asking)

    async def _ask_manager(self, n: Notification, rdev: int, asking: Asking) -> None:
        # Our watch is not told of our own change: the answer's view is what we keep (viewcache).
        with self._views.changing(rdev) if asking.verb == "tcsets" else contextlib.nullcontext():
            answer = await self.ask(n, asking.verb, rdev, *asking.args, timeout=asking.timeout)
            if asking.then is not None:
                asking.then(answer)

    def _keep(self, rdev: int, answer: tuple[str, ...]) -> Termios2:
        """The view in a "view" answer (or a tcsets one), kept for the next TCGETS."""
        try:
            generation, view, made_from = int(answer[0]), *(Termios2.unpack(bytes.fromhex(v)) for v in answer[1:3])
        except (ValueError, IndexError, struct.error):
            raise Continue from None  # a manager that answers otherwise: the kernel has the call
        self._views.keep(rdev, generation, view, made_from)
        return view

    async def ask(self, n: Notification, verb: str, rdev: int, *args: object,
                  timeout: float | None = ANSWER_TIMEOUT) -> tuple[str, ...]:
        """One request to the manager; the answer's values.  No manager or "no": the kernel has the call.
        ``timeout`` None: a change waits as long as the manager takes (it answers once the bytes written
        before it have left); reads of state are bounded, so a stuck manager cannot hang a program."""
        try:
            line = await self._connections.ask(n.pid, protocol.request(verb, rdev, *args), timeout)
            answer = protocol.parse_answer(line)
        except (OSError, TimeoutError, ValueError):  # ValueError: ProtocolError, or a line past the limit
            raise Continue from None
        if answer.status == "no":
            raise Continue
        self._consider_handoff()  # this manager answers for this port: it may take the listener
        if answer.status == "err":
            raise OSError(answer.errno, os.strerror(answer.errno))
        return answer.values

    # -- the listener handed to the manager (vcom.interposer.handoff) --------------------------------------

    def _consider_handoff(self) -> None:
        loop = asyncio.get_running_loop()
        if self._handed is not None or self._handing or loop.time() < self._next_handoff or self._done is None:
            return
        self._handing = True
        task = loop.create_task(self._hand_over())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _hand_over(self) -> None:
        """Hand the listener to the manager; on refusal read it here as before (and ask again later)."""
        loop = asyncio.get_running_loop()
        self._unread()  # two readers of one listener could each wait for a notification the other took
        writer = None
        try:
            handoff.clear(self._held)
            handoff.note_highest(self._held, self._highest)
            reader, writer = await asyncio.open_unix_connection(self._path, limit=protocol.MAX_LINE * 2)
            writer.write(protocol.header("seccomp", self._child))
            writer.write(protocol.request("handoff", 0, self.listener, self._held_fd, self._child))
            # No time limit: the manager takes the listener as it reads the request, or refuses it.  A
            # supervisor that gave up and read the listener again while a late "ok" was on its way would
            # make two readers of it, and the one that loses a notification to the other waits in NOTIF_RECV
            # for the next.  A manager that hangs holds the program's calls up as its requests would (its
            # watchdog replaces it, and the end of this connection gives the listener back).
            answer = protocol.parse_answer(await reader.readline())
            if answer.status != "ok":
                raise PermissionError  # "no": this manager may not take it (no ptrace right over us)
        except (OSError, ValueError) as exc:
            if writer is not None:
                writer.close()
            # A refusal will be the same until the manager is another one: asked again much later.
            later = _HANDOFF_REFUSED_RETRY if isinstance(exc, PermissionError) else _HANDOFF_RETRY
            self._next_handoff = loop.time() + later
            self._read()
            return
        finally:
            self._handing = False
        self._handed = writer
        self._watch_hangup(True)
        # The manager's notices of view changes would wake us for nothing now: the watch goes (and what it
        # kept with it), to be made anew if the listener comes back; so do the idle request connections.
        self._views.close()
        self._connections.close()
        task = loop.create_task(self._while_handed(reader))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _while_handed(self, reader: asyncio.StreamReader) -> None:
        """Wait for the manager's end of the handoff connection, then take the listener back."""
        with contextlib.suppress(OSError):
            while await reader.read(256):
                pass  # the manager sends nothing on it
        self._take_back()

    def _take_back(self) -> None:
        """The manager is gone (or let go): answer "continue" for whatever it held, read the listener here."""
        if self._handed is None:
            return
        self._handed.close()
        self._handed = None
        self._watch_hangup(False)
        for nid in handoff.held_ids(self._held):
            if seccomp.still_waiting(self.listener, nid):
                with contextlib.suppress(OSError):
                    seccomp.respond(self.listener, nid, cont=True)
        self._highest = handoff.highest(self._held) or self._highest  # the manager received after us
        handoff.clear(self._held)
        self._next_handoff = asyncio.get_running_loop().time() + _HANDOFF_RETRY
        if self._done is not None and not self._done.is_set():
            self._read()

    def _watch_hangup(self, on: bool) -> None:
        """While the manager reads the listener, its hang-up (the last process with the filter gone) is
        watched through an epoll that asks for no events: EPOLLHUP is reported regardless."""
        loop = asyncio.get_running_loop()
        if on and self._hangup is None:
            self._hangup = select.epoll()
            self._hangup.register(self.listener, 0)
            loop.add_reader(self._hangup.fileno(), self._program_gone)
        elif not on and self._hangup is not None:
            loop.remove_reader(self._hangup.fileno())
            self._hangup.close()
            self._hangup = None


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
        if not stat.S_ISCHR(st.st_mode) or os.major(st.st_rdev) not in handoff.PTY_SLAVE_MAJORS:
            return None
        current = get_termios2(fd)
        return (st.st_rdev, current) if current.tagged else None
    except OSError:
        return None
