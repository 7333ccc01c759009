"""How long adding a port takes, early and late: `python tests/bench/measure_add.py [COUNT] [VCOM]`.

Starts a private manager (a temporary VCOM_HOME), times `VCOM add` (default: the vcom next to this
interpreter) with no port configured, adds COUNT ports (default 1000) through the control socket,
times `VCOM add` again at that size, and one `vcom add --from` of 100 ports.  Prints medians (of the
first and last 50 adds over the socket, of 10 command calls each, wall-clock and CPU time of the
command), because other work on the machine makes single figures jump.  Every port reaches a closed
local TCP port and connects only when opened, so nothing goes on the network.  Everything is removed
at the end.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vcom import control
from vcom.config import PortConfig


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed_cli(vcom: str, env: dict[str, str], *args: str) -> tuple[float, float]:
    """Wall-clock and CPU (user + system) seconds of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([vcom, *args], env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def medians(samples: list[tuple[float, float]]) -> str:
    wall = statistics.median(s[0] for s in samples) * 1000
    cpu = statistics.median(s[1] for s in samples) * 1000
    return f"{wall:.0f} ms wall, {cpu:.0f} ms CPU"


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    vcom = sys.argv[2] if len(sys.argv) > 2 else str(Path(sys.executable).with_name("vcom"))
    home = Path(tempfile.mkdtemp(prefix="vcom-add-", dir="/tmp"))
    env = {**os.environ, "VCOM_HOME": str(home)}
    target = f"tcp://127.0.0.1:{closed_port()}"
    manager = subprocess.Popen([sys.executable, "-m", "vcom", "run", "--log-level", "warning"], env=env,
                               stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while not control.manager_running(home / "vcom.sock"):
            if time.monotonic() > deadline:
                raise SystemExit("the manager did not start")
            time.sleep(0.05)
        cli_early = [timed_cli(vcom, env, "add", str(home / f"early{i}"), target) for i in range(10)]
        socket_times = []
        for i in range(count):
            port = PortConfig(device=str(home / f"tty{i}"), target=target)
            start = time.perf_counter()
            answer = control.request(home / "vcom.sock", "add", port=port.to_json())
            socket_times.append(time.perf_counter() - start)
            if not answer.get("ok"):
                raise SystemExit(f"add #{i}: {answer.get('error')}")
        cli_late = [timed_cli(vcom, env, "add", str(home / f"late{i}"), target) for i in range(10)]
        batch = home / "batch.toml"
        batch.write_text("".join(f'[[port]]\ndevice = "{home}/b{i}"\ntarget = "{target}"\n\n' for i in range(100)))
        bulk = timed_cli(vcom, env, "add", "--from", str(batch))
        ms = 1000.0
        print(f"adds over the control socket: median of ports 1-50 {statistics.median(socket_times[:50]) * ms:.1f} "
              f"ms, of ports {count - 49}-{count} {statistics.median(socket_times[-50:]) * ms:.1f} ms")
        print(f"'vcom add' (whole command), median of 10: with 10 ports {medians(cli_early)}; "
              f"with {count + 10} ports {medians(cli_late)}")
        print(f"'vcom add --from' with 100 ports in one call: {bulk[0] * ms:.0f} ms wall, {bulk[1] * ms:.0f} ms CPU")
    finally:
        subprocess.run([vcom, "shutdown"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=60)
        manager.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
