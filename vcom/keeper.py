"""The keeper: keeps vcom's ports alive while the manager is replaced.

A program holds a port's pty *slave*; the port lives as long as someone
holds its *master*.  If only the manager held it, a crash, ``kill -9``, a
stalled loop or an upgrade would close it under the program (EIO for ever)
and leave the port's symlink pointing at a pty number the kernel may give to
someone else's terminal.  So ``vcom run`` is two processes:

* the keeper (this module, a few hundred lines, imports nothing of vcom's):
  it starts the manager, holds a duplicate of every pty master the manager
  hands it, and when the manager dies or stops answering its watchdog, starts
  a new one with those descriptors, within a second;
* the manager (:mod:`vcom.manager`), which takes the masters back, finds the
  programs still attached, reads what they wrote meanwhile and reconnects.

Between the two runs systemd's own protocol (sd_notify(3)): the manager is
started with ``LISTEN_FDS``/``LISTEN_FDNAMES`` and sends ``READY=1``,
``WATCHDOG=1``, ``FDSTORE=1``/``FDSTOREREMOVE=1`` over one end of a socket pair
(``VCOM_KEEPER_FD``; nobody else can reach it), exactly what it would send to
systemd, so one code path in the manager serves both.

Under systemd the keeper is the unit's main process.  It passes on READY,
STATUS and STOPPING and answers the unit's watchdog itself.  ``systemctl
restart`` (an upgrade) sends SIGTERM: the manager stops without removing its
ports, and the keeper moves the masters that programs hold into systemd's
store (FDSTORE) for the next keeper, and removes the symlinks of ports nobody
holds (the next manager creates them again), so no symlink is left pointing
at a pty that is gone.

How it ends:

* ``vcom shutdown`` (or SIGINT, Ctrl-C of ``vcom run``): the manager removes
  every port and what it stored, exits 0; the keeper, holding nothing more,
  exits 0.
* SIGTERM to the keeper without systemd: the same, all ports go.
* The manager exits with 78 (the config file cannot be read), or fails
  before it was ever ready: the keeper exits with its status, so that
  systemd shows why and does not restart in a loop.
* A manager that keeps dying is started again ever more slowly (0.1 s, doubling
  up to 5 s while restarts come within 30 s of each other), never given up on:
  the programs keep their ports while someone fixes the cause.
"""

from __future__ import annotations

import array
import contextlib
import os
import select
import signal
import socket
import sys
import time

WATCHDOG_DEFAULT = 10.0  # seconds without WATCHDOG=1 from a ready manager before it is replaced
RESTART_WINDOW = 30.0  # restarts closer together than this slow down: 0.1 s, doubling up to RESTART_MAX
RESTART_MAX = 5.0
STOP_TIMEOUT = 10.0
_MAX_FDS_PER_MESSAGE = 253  # SCM_MAX_FD
_TIOCGPTN = 0x80045430  # _IOR('T', 0x30, unsigned int)


def log(message: str) -> None:
    print(f"vcom keeper: {message}", file=sys.stderr, flush=True)


class Keeper:
    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.store: dict[str, int] = {}
        self.child: int | None = None
        self.child_status: int | None = None
        self.stopping: str | None = None  # "teardown" or "handover" once asked to stop
        self.ready = False
        self.ever_ready = False
        self.last_ping = 0.0
        self.restarts: list[float] = []
        self.watchdog = _watchdog_seconds()
        self.systemd = _SystemdLink()
        self._own, self._childs_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._signals: list[int] = []

    # -- the loop

    def run(self) -> int:
        _raise_fd_limit()  # the keeper holds a descriptor per port, as the manager does
        for fd, name in _inherited():
            self._put(name, fd)
        signal.set_wakeup_fd(self._wake_w)
        for handled in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(handled, self._on_signal)
        self._start()
        next_ping = 0.0
        while True:
            now = time.monotonic()
            if self.systemd.watchdog and now >= next_ping:
                self.systemd.send("WATCHDOG=1")
                next_ping = now + self.systemd.watchdog / 3
            timeout = 1.0 if self.systemd.watchdog is None else max(0.0, next_ping - now)
            watched: list[socket.socket | int] = [self._own, self._wake_r]
            readable, _, _ = select.select(watched, [], [], min(timeout, 1.0))
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 512)
            if self._own in readable:
                self._receive()
            for sig in self._take_signals():
                self._handle_signal(sig)
            self._reap()
            outcome = self._after_exit()
            if outcome is not None:
                return outcome
            self._check_watchdog()

    def _on_signal(self, sig: int, _frame: object) -> None:
        self._signals.append(sig)

    def _take_signals(self) -> list[int]:
        taken, self._signals = self._signals, []
        return taken

    def _handle_signal(self, sig: int) -> None:
        if sig == signal.SIGCHLD:
            return
        if sig == signal.SIGHUP:
            self._kill(signal.SIGHUP)  # the manager's "reload"
            return
        if self.stopping is None:
            # Under systemd SIGTERM is a stop or a restart (an upgrade): the ports held by programs are kept
            # for the next keeper.  Otherwise, and on SIGINT, the ports go.
            handover = sig == signal.SIGTERM and self.systemd.present
            self.stopping = "handover" if handover else "teardown"
            self.systemd.send("STOPPING=1")
            self._kill(signal.SIGTERM if handover else signal.SIGINT)
            self._stop_deadline = time.monotonic() + STOP_TIMEOUT

    # -- the manager

    def _start(self) -> None:
        names = list(self.store)
        fds = [self.store[name] for name in names]
        env = dict(os.environ)
        for key in ("NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "WATCHDOG_PID", "FDSTORE"):
            env.pop(key, None)
        env["WATCHDOG_USEC"] = str(int(self.watchdog * 1e6))
        if fds:
            env["LISTEN_FDS"] = str(len(fds))
            env["LISTEN_FDNAMES"] = ":".join(names)
        keeper_fd = 3 + len(fds)
        env["VCOM_KEEPER_FD"] = str(keeper_fd)
        self.ready = False
        self.child_status = None
        pid = os.fork()
        if pid == 0:
            try:
                _die_with_parent()
                _arrange_fds([*fds, self._childs_end.fileno()])
                env["LISTEN_PID"] = env["WATCHDOG_PID"] = str(os.getpid())
                if not fds:
                    env.pop("LISTEN_PID")
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGPIPE):
                    signal.signal(sig, signal.SIG_DFL)
                os.execve(self.command[0], self.command, env)
            finally:
                os._exit(127)
        self.child = pid
        self.last_ping = time.monotonic()

    def _kill(self, sig: int) -> None:
        if self.child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child, sig)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.child:
                self.child = None
                self.child_status = os.waitstatus_to_exitcode(status)

    def _after_exit(self) -> int | None:
        """What to do once the manager has exited: an exit status for the keeper, or None to go on."""
        if self.child is not None:
            if self.stopping and time.monotonic() > self._stop_deadline:
                log("the manager did not stop in time; killing it")
                self._kill(signal.SIGKILL)
            return None
        # What it sent before exiting is queued by now: read it before judging the exit (a `vcom shutdown`
        # whose last FDSTOREREMOVE is still unread would look like a crash and bring the ports back).
        self._receive()
        status = self.child_status
        if self.stopping == "handover":
            self._hand_over()
            return 0
        if self.stopping == "teardown":
            self._close_all(remove_links=True)
            return 0
        if status == 0 and not any(name.startswith("pty=") or name.startswith("pty#") for name in self.store):
            self._close_all(remove_links=False)  # `vcom shutdown`: the manager removed its ports itself
            return 0
        if status == 78:
            self._close_all(remove_links=True)  # the manager has said which file, line and column
            return 78
        if not self.ever_ready and status is not None and status > 0:
            # It never got going (a manager already runs, a path it cannot use): starting it again would
            # fail the same way.  Its own message has said why.
            self._close_all(remove_links=False)
            return status
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW] + [now]
        delay = min(0.1 * 2 ** (len(self.restarts) - 1), RESTART_MAX)
        how = f"was killed by signal {-status}" if status is not None and status < 0 else f"exited with {status}"
        log(f"the manager {how}; starting a new one with {len(self.store)} stored descriptor(s)"
            + (f" in {delay:g} s ({len(self.restarts)} failures within {RESTART_WINDOW:g} s)" if delay > 0.1 else ""))
        self._sleep(delay)
        if self.stopping is None:
            self._start()
        return None

    def _sleep(self, seconds: float) -> None:
        """Wait before a restart, still answering a stop request."""
        deadline = time.monotonic() + seconds
        while self.stopping is None and time.monotonic() < deadline:
            select.select([self._wake_r], [], [], max(0.0, deadline - time.monotonic()))
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 512)
            for sig in self._take_signals():
                self._handle_signal(sig)

    def _check_watchdog(self) -> None:
        if self.child is None or not self.ready or self.stopping:
            return
        if time.monotonic() - self.last_ping > self.watchdog:
            log(f"the manager sent no watchdog ping for {self.watchdog:g} s; replacing it")
            self._kill(signal.SIGABRT)
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                self._reap()
                if self.child is None:
                    return
                time.sleep(0.05)
            self._kill(signal.SIGKILL)

    # -- what the manager says

    def _receive(self) -> None:
        while True:
            try:
                data, ancillary, flags, _ = self._own.recvmsg(4096, socket.CMSG_SPACE(4 * _MAX_FDS_PER_MESSAGE),
                                                              socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            if flags & socket.MSG_CTRUNC:
                log("a stored descriptor was lost: this process is out of file descriptors")
            fds: list[int] = []
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    array_ = array.array("i")
                    array_.frombytes(payload[: len(payload) - len(payload) % 4])
                    fds.extend(array_)
            for fd in fds:
                os.set_inheritable(fd, False)
            self._message(data.decode(errors="replace"), fds)

    def _message(self, text: str, fds: list[int]) -> None:
        fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        if fields.get("FDSTORE") == "1" and fds:
            self._put(fields.get("FDNAME", "stored"), fds[0])
            for extra in fds[1:]:
                os.close(extra)
            fds = []
        for fd in fds:
            os.close(fd)
        if fields.get("FDSTOREREMOVE") == "1" and "FDNAME" in fields:
            old = self.store.pop(fields["FDNAME"], None)
            if old is not None:
                os.close(old)
        if fields.get("WATCHDOG") == "1":
            self.last_ping = time.monotonic()
        relay = [f"{key}={fields[key]}" for key in ("READY", "STATUS", "STOPPING") if key in fields]
        if fields.get("READY") == "1":
            self.ready = self.ever_ready = True
            self.last_ping = time.monotonic()
        if relay:
            self.systemd.send("\n".join(relay))

    def _put(self, name: str, fd: int) -> None:
        old = self.store.get(name)
        self.store[name] = fd
        if old is not None and old != fd:
            os.close(old)

    # -- the end

    def _hand_over(self) -> None:
        """Under systemd, stopping or restarting: what programs hold goes to systemd's store for the next
        keeper; a port nobody holds is let go, its symlink removed (the next manager makes a new one)."""
        kept = 0
        for name, fd in list(self.store.items()):
            if _is_pty(name) and not _held(fd):
                _remove_link(name, fd)
            elif self.systemd.send(f"FDSTORE=1\nFDNAME={name}", [fd]):
                kept += 1
            elif _is_pty(name):
                _remove_link(name, fd)
        log(f"stopped; {kept} descriptor(s) left in systemd's store for the next start")
        self._close_all(remove_links=False)

    def _close_all(self, *, remove_links: bool) -> None:
        for name, fd in list(self.store.items()):
            if remove_links and _is_pty(name):
                _remove_link(name, fd)
            with contextlib.suppress(OSError):
                os.close(fd)
        self.store.clear()


class _SystemdLink:
    """This keeper's own service manager, when systemd runs it."""

    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "")
        self.address = ("\0" + address[1:] if address.startswith("@") else address) or None
        usec = os.environ.get("WATCHDOG_USEC", "")
        mine = os.environ.get("WATCHDOG_PID", str(os.getpid())) == str(os.getpid())
        self.watchdog = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and mine else None

    @property
    def present(self) -> bool:
        return self.address is not None

    def send(self, text: str, fds: list[int] | None = None) -> bool:
        if self.address is None:
            return False
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendmsg([text.encode()], ancillary, 0, self.address)
            return True
        except OSError:
            return False


def _raise_fd_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and hard != resource.RLIM_INFINITY:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            log(f"file descriptor limit raised from {soft} to {hard}")  # for the manager too, which inherits it


def _watchdog_seconds() -> float:
    text = os.environ.get("VCOM_WATCHDOG_SEC", "")
    try:
        value = float(text) if text else WATCHDOG_DEFAULT
    except ValueError:
        value = WATCHDOG_DEFAULT
    return value if value > 0 else WATCHDOG_DEFAULT


def _inherited() -> list[tuple[int, str]]:
    """Descriptors systemd passed to this keeper (its store, after a restart)."""
    try:
        if int(os.environ.get("LISTEN_PID", "0")) != os.getpid():
            return []
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    found = []
    for index in range(count):
        fd = 3 + index
        os.set_inheritable(fd, False)
        found.append((fd, names[index] if index < len(names) and names[index] else f"unknown{index}"))
    return found


def _die_with_parent() -> None:
    """The manager ends with its keeper (PR_SET_PDEATHSIG): killing the keeper stops the whole service,
    as systemd stopping the unit's cgroup would, instead of leaving a manager nobody supervises."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _arrange_fds(fds: list[int]) -> None:
    """In the child: ``fds`` become 3, 4, ... in order, inheritable; every other descriptor above 2 closes."""
    high = [os.dup(fd) for fd in fds]  # out of the way first: a target number may be one of the sources
    for index, fd in enumerate(high):
        if fd != 3 + index:
            os.dup2(fd, 3 + index)
        os.set_inheritable(3 + index, True)  # dup2 onto itself would leave dup's close-on-exec
    os.closerange(3 + len(fds), os.sysconf("SC_OPEN_MAX"))


def _is_pty(name: str) -> bool:
    return name.startswith("pty=") or name.startswith("pty#")


def _held(master: int) -> bool:
    """Whether a program holds the slave of this pty master (no POLLHUP)."""
    poller = select.poll()
    poller.register(master, select.POLLIN)
    return not any(events & select.POLLHUP for _, events in poller.poll(0))


def _remove_link(name: str, master: int) -> None:
    """Remove the port's symlink if it still leads to this master's slave."""
    if not name.startswith("pty="):
        return
    link = name[len("pty="):]
    try:
        import fcntl

        number = array.array("I", [0])
        fcntl.ioctl(master, _TIOCGPTN, number, True)
        if os.readlink(link) == f"/dev/pts/{number[0]}":
            os.unlink(link)
    except OSError:
        pass


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: python -m vcom.keeper -- MANAGER-COMMAND...", file=sys.stderr)
        return 2
    return Keeper(argv).run()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
