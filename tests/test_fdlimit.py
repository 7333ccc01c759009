"""File descriptors: the manager lifts its soft limit, refuses ports before the limit leaves the
control socket unable to accept, and says when the limit is near."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from peers import Vcom, wait_until

from vcom import control, fdlimit

PORTS = 200


def start_manager(vcom: Vcom, soft: int, hard: int) -> subprocess.Popen[bytes]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    with open(vcom.home / "manager.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "vcom", "run"], env=vcom.env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, preexec_fn=limit)
    wait_until(lambda: proc.poll() is not None or control.manager_running(vcom.home / "vcom.sock"), 60,
               "the manager to answer")
    assert proc.poll() is None, (vcom.home / "manager.log").read_text()
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def open_files_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no 'Max open files' in /proc/PID/limits")


def established_from(pid: int, port: int) -> int:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if int(parts[2].split(":")[1], 16) == port and parts[3] == "01" and parts[9] in inodes:
            count += 1
    return count


def test_manager_raises_its_soft_limit_to_the_hard_one(vcom: Vcom) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard <= 1024:
        pytest.skip(f"the hard limit here ({hard}) leaves nothing to raise")
    manager = start_manager(vcom, 1024, hard)
    try:
        # `vcom run` is the keeper, which holds every pty master too; the manager is its child.
        assert open_files_limits(manager.pid) == (hard, hard)
        assert open_files_limits(vcom.manager_pid()) == (hard, hard)
    finally:
        stop(manager)
    assert f"file descriptor limit raised from 1024 to {hard}" in (vcom.home / "manager.log").read_text()


def test_ports_stop_short_of_the_limit_and_the_manager_stays_reachable(vcom: Vcom, tmp_path: Path) -> None:
    """More configured ports than descriptors: the manager creates what fits with their sockets
    connected, refuses the rest with a reason, warns, and still answers on its control socket."""
    limit = 256
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1024)  # the kernel completes the handshakes; nobody needs to accept
    port = server.getsockname()[1]
    devices = [tmp_path / f"p{i}" for i in range(PORTS)]
    vcom.home.mkdir(parents=True, exist_ok=True)
    (vcom.home / "vcom.toml").write_text("".join(
        f'[[port]]\ndevice = "{d}"\ntarget = "tcp://127.0.0.1:{port}"\nconnect = "always"\n\n' for d in devices))
    manager = start_manager(vcom, limit, limit)
    try:
        created = [d for d in devices if os.path.islink(d)]
        assert 0 < len(created) < PORTS
        assert len(created) * fdlimit.PER_PORT + fdlimit.RESERVE <= limit
        inner = vcom.manager_pid()  # the manager, the keeper's child, holds the sockets
        wait_until(lambda: established_from(inner, port) == len(created), 30, "every created port connected")

        answer = control.request(vcom.home / "vcom.sock", "status")
        assert answer["ok"] and len([p for p in answer["ports"] if p["state"] == "connected"]) == len(created)
        assert answer["manager"]["fd_limit"] == limit and answer["manager"]["fds_near_limit"] is True
        assert answer["manager"]["fds"] >= len(created) * fdlimit.PER_PORT

        refused = vcom.cli("add", str(tmp_path / "one-more"), f"tcp://127.0.0.1:{port}")
        assert refused.returncode == 1
        assert refused.stderr.startswith("vcom: file descriptor limit reached (") and len(
            refused.stderr.splitlines()) == 1, refused.stderr
        assert not os.path.lexists(tmp_path / "one-more")
        vcom.ok("remove", str(created[0]))
        assert not os.path.lexists(created[0])
    finally:
        stop(manager)
        server.close()
    log = (vcom.home / "manager.log").read_text()
    assert "file descriptors in use" in log and "near the limit; raise LimitNOFILE" in log
    assert "cannot create the port: file descriptor limit reached" in log


def test_lowest_free_descriptor_is_a_lower_bound_of_those_open() -> None:
    before = fdlimit.usage()
    extra = [os.open(os.devnull, os.O_RDONLY) for _ in range(20)]
    try:
        low = fdlimit.lowest_free()
        now = fdlimit.usage()
        assert now.open == before.open + 20
        assert low <= now.open
        assert low > max(extra)  # no hole below: the next one comes after ours
    finally:
        for fd in extra:
            os.close(fd)
    usable = 1024 - fdlimit.RESERVE
    assert fdlimit.FdUsage(int(0.9 * usable) + 1, 1024).near and not fdlimit.FdUsage(int(0.9 * usable) - 1, 1024).near


def test_raise_soft_limit_in_a_fresh_process() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard <= 64:
        pytest.skip("hard limit too low to lower the soft one")
    script = textwrap.dedent("""
        import resource
        from vcom import fdlimit
        print(*fdlimit.raise_soft_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))).stdout.split()
    assert list(map(int, out)) == [64, hard, hard, hard]
