"""The processes a benchmark run starts, and what it reads about them from /proc.

Everything here is started by the bench and stopped by it (``Procs.close``), on 127.0.0.1:
the C echo server, vcom managers (each with its own VCOM_HOME) and socat relays.
"""

from __future__ import annotations

import contextlib
import os
import queue
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))

from vcom import control  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def cpu_seconds(pid: int) -> float:
    """CPU time of a process to the nanosecond: the scheduler's run time of each of its threads
    (/proc/PID/task/TID/schedstat).  /proc/PID/stat counts whole clock ticks (10 ms): a socat relay
    streaming 11.5 KB/s runs a few milliseconds in a 4 s window, so a sum of 1,000 such differences
    came out far too low (often 0) and made socat look several times cheaper than it is."""
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    return total / 1e9


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def pss_bytes(pid: int) -> int:
    """Proportional set size: shared pages divided among their users, so that a sum over many
    processes of one program counts its shared libraries once."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def voluntary_switches(pid: int) -> int:
    """How often the process went to sleep: each is a wake-up later, so an idle loop shows here."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def established(pids: list[int], port: int) -> int:
    """TCP connections of these processes to 127.0.0.1:``port`` that are established."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    count = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            remote_port = int(parts[2].split(":")[1], 16)
            if remote_port == port and parts[3] == "01" and parts[9] in inodes:
                count += 1
    return count


def raise_own_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def build(source: str, workdir: Path) -> Path:
    """Compile one of the bench's C helpers with the system compiler (gcc is a test peer)."""
    out = workdir / Path(source).stem
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler: run `make peers` (gcc is one of the test peers)")
    subprocess.run([cc, "-O2", "-Wall", "-o", str(out), str(HERE / source)], check=True)
    return out


class Procs:
    """Every child process of the run, stopped in reverse order by ``close``."""

    def __init__(self) -> None:
        self._children: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, **kwargs)
        self._children.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(ValueError):
            self._children.remove(proc)

    def stop_many(self, procs: list[subprocess.Popen[bytes]]) -> None:
        """SIGTERM to all first, then wait: a thousand relays stop in parallel."""
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        gone = set(map(id, procs))
        self._children = [p for p in self._children if id(p) not in gone]

    def close(self) -> None:
        self.stop_many(list(reversed(self._children)))


class EchoServer:
    """tests/bench/echo.c: a raw echo port and an RFC 2217 echo port on 127.0.0.1."""

    def __init__(self, procs: Procs, binary: Path) -> None:
        self.proc = procs.start([str(binary)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().split()
        if len(first) != 3 or first[0] != b"PORTS":
            raise RuntimeError(f"the echo server did not start: {first!r}")
        self.raw_port, self.telnet_port = int(first[1]), int(first[2])
        # (COM-PORT-OPTION code, value, CLOCK_MONOTONIC ns) of each SET-BAUDRATE and SET-CONTROL
        self.reports: queue.Queue[tuple[int, int, int]] = queue.Queue()
        threading.Thread(target=self._read_reports, daemon=True).start()

    def _read_reports(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.split()
            if len(parts) == 4 and parts[0] == b"SET":
                self.reports.put((int(parts[1]), int(parts[2]), int(parts[3])))

    def target(self, kind: str) -> str:
        return f"tcp://127.0.0.1:{self.raw_port}" if kind == "tcp" else f"rfc2217://127.0.0.1:{self.telnet_port}"


class Manager:
    """One ``vcom run`` in the foreground with its own VCOM_HOME; ``nofile`` sets its soft fd limit."""

    def __init__(self, procs: Procs, home: Path, *, nofile: int | None = None, wait: bool = True) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "VCOM_HOME": str(home)}
        self.socket = home / "vcom.sock"
        self.log = home / "manager.log"

        def limit() -> None:
            if nofile is not None:
                _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

        with open(self.log, "ab") as log:
            self.proc = procs.start([sys.executable, "-m", "vcom", "run", "--log-level", "warning"],
                                    env=self.env, cwd=REPO, stdout=log, stderr=log,
                                    stdin=subprocess.DEVNULL, preexec_fn=limit)
        self._procs = procs
        if not wait:
            return
        wait_for(lambda: self.proc.poll() is not None or control.manager_running(self.socket), 60,
                 "the vcom manager to answer")
        if self.proc.poll() is not None:
            raise RuntimeError(f"the vcom manager exited: {self.log.read_text()[-2000:]}")

    @property
    def pid(self) -> int:
        """The manager's process: `vcom run` becomes the keeper, which runs the manager as its child and
        holds no socket and moves no data, so the figures are the child's."""
        children: list[str] = []
        with contextlib.suppress(OSError), open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            children = f.read().split()
        return int(children[0]) if len(children) == 1 else self.proc.pid

    def ask(self, cmd: str, **args: Any) -> dict[str, Any]:
        answer = control.request(self.socket, cmd, timeout=120, **args)
        if not answer.get("ok"):
            raise RuntimeError(f"vcom {cmd}: {answer.get('error')}")
        return answer

    def add(self, device: Path, target: str, connect: str = "always") -> None:
        self.ask("add", port={"device": str(device), "target": target, "connect": connect})

    def ports(self) -> list[dict[str, Any]]:
        return self.ask("status")["ports"]

    def wait_connected(self, devices: list[Path], timeout: float = 30) -> None:
        names = {str(d) for d in devices}
        wait_for(lambda: all(p["state"] == "connected" for p in self.ports() if p["device"] in names), timeout,
                 "vcom ports to connect", interval=0.2)

    def cli(self, *args: str, env: dict[str, str] | None = None) -> float:
        """Seconds one `vcom ...` command takes, start-up included, as a user or script sees it."""
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "vcom", *args], env=env or self.env, cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return time.perf_counter() - started

    def last_log_line(self) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else "(no log)"

    def stop(self) -> None:
        self._procs.stop(self.proc, timeout=60)


def write_config(path: Path, ports: list[tuple[Path, str, str]]) -> None:
    """A vcom.toml in the documented format (one [[port]] table per port), written before the manager starts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for device, target, connect in ports:
            f.write(f'[[port]]\ndevice = "{device}"\ntarget = "{target}"\nconnect = "{connect}"\n\n')


def socat_argv(link: Path, port: int) -> list[str]:
    # The usual way to make a TCP serial server look local with socat; nodelay as vcom sets it.
    return ["socat", f"PTY,link={link},rawer", f"TCP:127.0.0.1:{port},nodelay"]


class Socat:
    def __init__(self, procs: Procs, link: Path, port: int) -> None:
        self.link = link
        self.proc = procs.start(socat_argv(link, port), stdin=subprocess.DEVNULL)
        wait_for(lambda: link.exists() or self.proc.poll() is not None, 15, f"socat to create {link}")
        if self.proc.poll() is not None:
            raise RuntimeError(f"socat exited ({self.proc.returncode})")

    @property
    def pid(self) -> int:
        return self.proc.pid
