"""vcom as a service: systemd's readiness protocol for the manager and for a
foreground share, and `vcom monitor` on a live port.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import termios

import serial
from peers import Vcom, bound_addresses, notify_socket, read_exact, wait_until, write_all


def test_manager_is_ready_only_once_its_ports_exist(vcom: Vcom, refused_port, tmp_path):
    ports = [tmp_path / f"ttyV{i}" for i in range(3)]
    for port in ports:
        vcom.add(port, f"127.0.0.1:{refused_port}")
    vcom.ok("shutdown")
    assert not any(os.path.lexists(p) for p in ports)

    notify = notify_socket(tmp_path)
    manager = vcom.start_manager(env={"NOTIFY_SOCKET": str(tmp_path / "notify")}, wait=False)
    try:
        message = notify.recv(4096).decode()
        assert "READY=1" in message and "3 port(s)" in message
        # systemd starts what is ordered after vcom.service now: every port must already be there.
        assert all(os.path.islink(p) and os.path.exists(p) for p in ports)
        manager.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in notify.recv(4096).decode()
        assert manager.wait(timeout=15) == 0
        assert not any(os.path.lexists(p) for p in ports)
    finally:
        if manager.poll() is None:
            manager.kill()
            manager.wait(timeout=10)
        notify.close()


def test_foreground_share_for_a_systemd_instance(tmp_path):
    notify = notify_socket(tmp_path)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"), "VCOM_HOME": str(tmp_path / "h")}
    share = subprocess.Popen([sys.executable, "-m", "vcom", "share", "sim:echo", "--listen", "127.0.0.1:0",
                              "--protocol", "tcp", "--foreground"], env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ready = notify.recv(4096).decode()
        assert "READY=1" in ready
        # STATUS=serving sim:echo on 127.0.0.1:PORT: the port the kernel gave it, as bound.
        port = int(ready.rsplit(":", 1)[1])
        assert bound_addresses(share.pid) == [("127.0.0.1", port)]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"ping over tcp")
            got = b""
            while len(got) < 13:
                chunk = client.recv(64)
                assert chunk, "the share closed the connection"
                got += chunk
            assert got == b"ping over tcp"
        share.send_signal(signal.SIGTERM)
        assert share.wait(timeout=15) == 0, share.stderr.read().decode() if share.stderr else ""
        assert not (tmp_path / "h" / "vcom.sock").exists()  # no manager was involved
    finally:
        if share.poll() is None:
            share.kill()
            share.wait(timeout=10)
        notify.close()


def test_monitor_shows_traffic_and_events_in_order(vcom: Vcom, tmp_path):
    listen = vcom.share("sim:echo")
    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{listen}")
    record = tmp_path / "monitor.jsonl"
    monitor = subprocess.Popen([sys.executable, "-m", "vcom", "monitor", str(port), "--raw", "--output", str(record)],
                               env=vcom.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        wait_until(lambda: record.exists() and record.read_text().strip(), 10, "the monitor started")
        with serial.Serial(str(port), 115200, timeout=0) as program:
            write_all(program.fileno(), b"hello\xff")
            assert read_exact(program.fileno(), 6) == b"hello\xff"
            program.baudrate = 57600
            termios.tcflush(program.fileno(), termios.TCOFLUSH)
            write_all(program.fileno(), b"bye")
            assert read_exact(program.fileno(), 3) == b"bye"

        def events() -> list[dict]:
            return [json.loads(line) for line in record.read_text().splitlines() if line.strip()]

        wait_until(lambda: any(e["kind"] == "close" for e in events()), 10, "the close in the monitor")
        seen = events()
        kinds = [e["kind"] for e in seen]
        data = [(e["dir"], bytes.fromhex(e["data"])) for e in seen if e["kind"] == "data"]
        out = b"".join(d for direction, d in data if direction == "out")
        back = b"".join(d for direction, d in data if direction == "in")
        assert out == b"hello\xffbye" and back == b"hello\xffbye"
        first_bye = next(i for i, e in enumerate(seen) if e["kind"] == "data" and b"bye" in bytes.fromhex(e["data"]))
        change = next(i for i, e in enumerate(seen) if e["kind"] == "settings" and e["settings"]["baud"] == 57600)
        purge = next(i for i, e in enumerate(seen) if e["kind"] == "purge" and e["transmit"])
        assert kinds.index("open") < change < first_bye and purge < first_bye
        assert any(e["kind"] == "signals" and e.get("dsr") is True for e in seen)  # sim:echo: DTR drives DSR
        assert [e["t"] for e in seen] == sorted(e["t"] for e in seen)
    finally:
        monitor.send_signal(signal.SIGINT)
        monitor.wait(timeout=10)
    # The monitor is gone; the port goes on working without it.
    with serial.Serial(str(port), 115200, timeout=0) as program:
        write_all(program.fileno(), b"again")
        assert read_exact(program.fileno(), 5) == b"again"



def test_manager_serves_prometheus_metrics(vcom: Vcom, refused_port, tmp_path):
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    port = tmp_path / "ttyV0"
    vcom.add(port, f"127.0.0.1:{refused_port}", "--baud", "19200")
    vcom.ok("shutdown")
    manager = vcom.start_manager("--metrics", "127.0.0.1:0")
    try:
        # The control socket is a Unix socket: the one TCP listener is the metrics endpoint.
        # `vcom run` is the keeper; its child, the manager, holds the listener.
        ((_, listen),) = wait_until(lambda: bound_addresses(vcom.manager_pid()), 15, "the metrics listener")

        def scrape() -> str | None:
            try:
                with urlopen(f"http://127.0.0.1:{listen}/metrics", timeout=5) as answer:
                    return answer.read().decode()
            except OSError:
                return None

        text = wait_until(scrape, 15, "the metrics endpoint")
        samples = {(s.name, s.labels.get("device")): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        assert samples[("vcom_port_baud", str(port))] == 19200
        assert samples[("vcom_port_open", str(port))] == 0
        assert ("vcom_port_reconnects_total", str(port)) in samples
    finally:
        manager.send_signal(signal.SIGTERM)
        manager.wait(timeout=15)


def test_shell_completion_offers_commands_and_configured_devices(vcom: Vcom, refused_port, tmp_path):
    for name in ("ttyA", "ttyB"):
        vcom.add(tmp_path / name, f"127.0.0.1:{refused_port}")
    vcom.share("sim:echo")

    def complete(*words: str) -> list[str]:
        env = {**vcom.env, "_VCOM_COMPLETE": "complete_bash", "COMP_WORDS": " ".join(["vcom", *words]),
               "COMP_CWORD": str(len(words))}
        result = subprocess.run([sys.executable, "-m", "vcom"], env=env, capture_output=True, text=True, timeout=30)
        return result.stdout.split()

    assert {"add", "monitor", "share", "status"} <= set(complete(""))
    assert complete("status", str(tmp_path / "tty")) == [str(tmp_path / "ttyA"), str(tmp_path / "ttyB")]
    assert complete("unshare", "sim:") == ["sim:echo"]


def test_json_logs_are_one_object_per_line(vcom: Vcom, refused_port, tmp_path):
    vcom.add(tmp_path / "ttyV0", f"127.0.0.1:{refused_port}")
    vcom.ok("shutdown")
    manager = vcom.start_manager("--log-format", "json", stderr=subprocess.PIPE, wait=False)
    try:
        wait_until(vcom.answering, 15, "manager answering")
    finally:
        manager.send_signal(signal.SIGTERM)
        _, err = manager.communicate(timeout=15)
    records = [json.loads(line) for line in err.decode().splitlines()]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any("ready" in r["message"] and r["level"] == "info" for r in records)
