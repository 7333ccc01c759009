"""The config file is the user's: vcom edits it in place and never destroys it.

Each test writes a file as a person would (comments, odd spacing, entries vcom cannot use), drives
the real `vcom` command with a private VCOM_HOME, and compares the file's bytes afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from peers import Vcom, free_port, wait_until

from vcom.configfile import ConfigFile, ConfigSyntaxError, load

HAND_WRITTEN = """\
# My ports.  Do not lose this comment.

[[port]]   # the GPS on the roof
device   = "{home}/gps"
target   = "tcp://127.0.0.1:{port}"   # raw TCP
baud     = 4800

# A typo that vcom cannot use: baud is a string.
[[port]]
device = "{home}/plc"
target = "127.0.0.1:{port}"
baud = "19200"

[[port]]
device = "{home}/modem"
target = "tcp://127.0.0.1:{port}"
connect = "on-open"
"""


def write_config(vcom: Vcom, text: str) -> Path:
    path = vcom.home / "vcom.toml"
    path.write_text(text.format(home=vcom.home, port=free_port()))
    return path


def one_line_refusal(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, f"accepted: {result.stdout!r}"
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- syntax errors: nothing runs, nothing is written ----------------------------------------------


BROKEN = '[[port]]\ndevice = "/dev/ttyV0"\ntarget = = "h:1"\n'


def test_syntax_error_stops_add_list_and_run_with_file_line_and_column(vcom: Vcom, tmp_path: Path) -> None:
    path = vcom.home / "vcom.toml"
    path.write_text(BROKEN)
    before = path.read_bytes()
    for args in (["add", str(tmp_path / "ttyV1"), f"127.0.0.1:{free_port()}"], ["list"], ["list", "--json"]):
        line = one_line_refusal(vcom.cli(*args))
        assert f"{path}:3:10: not valid TOML" in line, line
    assert not vcom.manager_pids(), "a broken file must not start a manager"
    assert not os.path.lexists(tmp_path / "ttyV1")

    # The manager itself (what systemd runs): exit 78 with that one line, and no other output.
    run = subprocess.run([sys.executable, "-m", "vcom", "run"], env=vcom.env, capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 78
    assert run.stderr.splitlines() == [f"vcom: {path}:3:10: not valid TOML: invalid value"], run.stderr
    assert path.read_bytes() == before


def test_file_broken_while_the_manager_runs_is_not_written(vcom: Vcom, tmp_path: Path) -> None:
    vcom.add(tmp_path / "ttyA", f"tcp://127.0.0.1:{free_port()}")
    path = vcom.home / "vcom.toml"
    path.write_text(path.read_text() + "\noops = \n# the user was half-way through an edit\n")
    before = path.read_bytes()
    line = one_line_refusal(vcom.cli("add", str(tmp_path / "ttyB"), f"tcp://127.0.0.1:{free_port()}"))
    assert str(path) in line and "not valid TOML" in line
    line = one_line_refusal(vcom.cli("remove", str(tmp_path / "ttyA")))
    assert str(path) in line and "not valid TOML" in line
    assert path.read_bytes() == before
    assert not os.path.lexists(tmp_path / "ttyB")
    assert os.path.islink(tmp_path / "ttyA")  # the refused remove left the port alone


def test_not_utf8_names_the_file(vcom: Vcom) -> None:
    path = vcom.home / "vcom.toml"
    path.write_bytes(b'# caf\xe9\n[[port]]\ndevice = "/dev/ttyV0"\n')
    line = one_line_refusal(vcom.cli("list"))
    assert line.startswith(f"vcom: {path}:1:6: not UTF-8") and "codec" not in line


# -- edits keep everything else --------------------------------------------------------------------


def test_add_appends_and_keeps_comments_formatting_and_unusable_entries(vcom: Vcom, tmp_path: Path) -> None:
    path = write_config(vcom, HAND_WRITTEN)
    before = path.read_bytes()
    inode = path.stat().st_ino
    vcom.add(tmp_path / "ttyNew", f"tcp://127.0.0.1:{free_port()}", "--baud", "57600")
    vcom.add(tmp_path / "ttyNew2", f"tcp://127.0.0.1:{free_port()}")
    after = path.read_bytes()
    assert after.startswith(before), "the user's part of the file changed"
    assert path.stat().st_ino == inode, "the file was replaced, not appended to"
    data = tomllib.loads(after.decode())
    assert [p["device"] for p in data["port"]] == [f"{vcom.home}/gps", f"{vcom.home}/plc", f"{vcom.home}/modem",
                                                   str(tmp_path / "ttyNew"), str(tmp_path / "ttyNew2")]
    assert data["port"][1]["baud"] == "19200"  # still there, still wrong: the user's to fix
    assert data["port"][3]["baud"] == 57600
    # The usable entries of the file were started with the manager.
    assert os.path.islink(vcom.home / "gps") and os.path.islink(vcom.home / "modem")
    assert not os.path.lexists(vcom.home / "plc")


def test_remove_deletes_one_table_and_keeps_the_rest(vcom: Vcom, tmp_path: Path) -> None:
    path = write_config(vcom, HAND_WRITTEN)
    vcom.add(tmp_path / "ttyNew", f"tcp://127.0.0.1:{free_port()}")
    vcom.ok("remove", str(vcom.home / "modem"))
    text = path.read_text()
    assert "# My ports.  Do not lose this comment." in text
    assert "[[port]]   # the GPS on the roof" in text and 'target   = "tcp://' in text and "# raw TCP" in text
    assert "# A typo that vcom cannot use: baud is a string." in text and 'baud = "19200"' in text
    devices = [p["device"] for p in tomllib.loads(text)["port"]]
    assert devices == [f"{vcom.home}/gps", f"{vcom.home}/plc", str(tmp_path / "ttyNew")]
    assert not os.path.lexists(vcom.home / "modem")


def test_unusable_entry_is_reported_by_list_and_status_and_protected(vcom: Vcom, tmp_path: Path) -> None:
    path = write_config(vcom, HAND_WRITTEN)
    listing = vcom.ok("list")
    assert f"unusable entry, skipped: {path}:9: port #2 ({vcom.home}/plc): baud '19200' must be a whole number" \
        in listing.stdout
    assert "manager not running" in listing.stdout
    problems = json.loads(vcom.ok("list", "--json").stdout)["problems"]
    assert [(p["line"], p["device"]) for p in problems] == [(9, f"{vcom.home}/plc")]

    vcom.add(tmp_path / "ttyNew", f"tcp://127.0.0.1:{free_port()}")
    status = vcom.ok("status")
    assert f"unusable entry, skipped: {path}:9: port #2" in status.stdout
    assert json.loads(vcom.ok("status", "--json").stdout)["problems"][0]["reason"].startswith("baud '19200'")
    refused = vcom.ok("list").stdout
    assert "manager running (pid" in refused

    # A second entry for the same device would be a trap: refused, with the way out.
    before = path.read_bytes()
    line = one_line_refusal(vcom.cli("add", str(vcom.home / "plc"), f"tcp://127.0.0.1:{free_port()}"))
    assert "cannot use" in line and "fix or delete it first" in line
    assert path.read_bytes() == before
    # Removing it on purpose works.
    vcom.ok("remove", str(vcom.home / "plc"))
    assert 'baud = "19200"' not in path.read_text()


def test_duplicate_device_in_the_file_is_reported_not_started_twice(vcom: Vcom) -> None:
    path = vcom.home / "vcom.toml"
    entry = f'[[port]]\ndevice = "{vcom.home}/dup"\ntarget = "tcp://127.0.0.1:{free_port()}"\n\n'
    path.write_text(entry + entry)
    loaded = load(path)
    assert [p.device for p in loaded.ports] == [f"{vcom.home}/dup"]
    assert [str(p) for p in loaded.problems] == [f"{path}:5: port #2 ({vcom.home}/dup): {vcom.home}/dup is "
                                                 "already defined by port #1"]


# -- many ports in one call -----------------------------------------------------------------------


def test_add_from_file_creates_every_port_with_one_edit(vcom: Vcom, tmp_path: Path) -> None:
    target = f"tcp://127.0.0.1:{free_port()}"
    batch = tmp_path / "ports.toml"
    batch.write_text(
        f'[[port]]\ndevice = "{tmp_path}/b0"\ntarget = "{target}"\n\n'
        f'[[port]]\ndevice = "{tmp_path}/b1"\ntarget = "{target}"\nbaud = 115200\n\n'
        f'[[port]]\ndevice = "{tmp_path}/b2"\nsplit_of = "{tmp_path}/b0"\n'
    )
    result = vcom.ok("add", "--from", str(batch), "--linger", "0.5")
    assert result.stdout.splitlines() == [f"{tmp_path}/b{i} -> {target}" for i in range(3)]
    ports = {p["device"]: p for p in json.loads(vcom.ok("list", "--json").stdout)["ports"]}
    assert ports[f"{tmp_path}/b1"]["baud"] == 115200 and ports[f"{tmp_path}/b1"]["linger"] == 0.5
    assert ports[f"{tmp_path}/b2"]["split_of"] == f"{tmp_path}/b0"
    assert all(os.path.islink(tmp_path / f"b{i}") for i in range(3))


def test_add_from_file_is_all_or_nothing(vcom: Vcom, tmp_path: Path) -> None:
    vcom.add(tmp_path / "first", f"tcp://127.0.0.1:{free_port()}")
    path = vcom.home / "vcom.toml"
    before = path.read_bytes()
    target = f"tcp://127.0.0.1:{free_port()}"
    batch = tmp_path / "ports.toml"
    # The third entry's path is taken by the manager's own port: found only when the manager tries.
    batch.write_text(f'[[port]]\ndevice = "{tmp_path}/c0"\ntarget = "{target}"\n\n'
                     f'[[port]]\ndevice = "{tmp_path}/c1"\ntarget = "{target}"\n\n'
                     f'[[port]]\ndevice = "{tmp_path}/first"\ntarget = "{target}"\n')
    line = one_line_refusal(vcom.cli("add", "--from", str(batch)))
    assert "first" in line
    assert path.read_bytes() == before
    assert not os.path.lexists(tmp_path / "c0") and not os.path.lexists(tmp_path / "c1")

    batch.write_text(f'[[port]]\ndevice = "{tmp_path}/c0"\ntarget = "{target}"\nbaud = "fast"\n')
    line = one_line_refusal(vcom.cli("add", "--from", str(batch)))
    assert line == f"vcom: {batch}:1: [[port]] #1 ({tmp_path}/c0): baud 'fast' must be a whole number between " \
                   "1 and 20000000"


# -- without a manager ----------------------------------------------------------------------------


def test_list_status_and_remove_work_without_a_manager(vcom: Vcom, tmp_path: Path) -> None:
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    vcom.add(a, f"tcp://127.0.0.1:{free_port()}")
    vcom.add(b, f"tcp://127.0.0.1:{free_port()}")
    pids = vcom.manager_pids()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)  # a crash: the links stay behind, nothing answers
    wait_until(lambda: not vcom.manager_pids(), 10, "the manager gone")
    assert os.path.islink(a)

    assert vcom.ok("list", "--paths").stdout.splitlines() == [str(a), str(b)]
    assert "manager not running" in vcom.ok("list").stdout
    status = vcom.cli("status")
    assert status.returncode == 3
    assert "no vcom manager is running" in status.stderr and "configures 2 port(s) and 0 share(s)" in status.stderr
    assert f"{a}, {b} still lead to the pty of a manager that stopped" in status.stderr
    as_json = json.loads(vcom.cli("status", "--json").stdout)
    assert as_json["manager"] == {"running": False} and as_json["stale_links"] == [str(a), str(b)]

    removed = vcom.ok("remove", str(b))
    assert "no manager is running" in removed.stdout
    assert not os.path.lexists(b)  # the link the crash left is gone with its entry
    assert [p["device"] for p in tomllib.loads((vcom.home / "vcom.toml").read_text())["port"]] == [str(a)]

    # The next start repairs what the crash left.
    vcom.add(tmp_path / "ttyC", f"tcp://127.0.0.1:{free_port()}")
    assert os.path.realpath(a).startswith("/dev/pts/") and os.path.exists(a)
    assert vcom.status(a)["state"] == "idle"


# -- the editor on its own ------------------------------------------------------------------------


def test_editor_reads_again_only_a_changed_file(tmp_path: Path) -> None:
    path = tmp_path / "vcom.toml"
    config = ConfigFile(path)
    config.load()
    config.append("port", [{"device": "/dev/a", "target": "h:1"}])
    config.append("port", [{"device": "/dev/b", "target": "h:2", "owner": None}])
    assert [p.device for p in load(path).ports] == ["/dev/a", "/dev/b"]
    assert "owner" not in path.read_text()  # None: the default, left out
    with path.open("a") as out:  # someone edits while vcom holds the file
        out.write("[[port]\n")
    with pytest.raises(ConfigSyntaxError, match=r":\d+:\d+: not valid TOML"):
        config.append("port", [{"device": "/dev/c", "target": "h:3"}])
    assert "/dev/c" not in path.read_text()


def test_editor_falls_back_to_a_full_edit_for_inline_arrays(tmp_path: Path) -> None:
    path = tmp_path / "vcom.toml"
    path.write_text('# inline\nport = [{device = "/dev/a", target = "h:1"}]\n')
    config = ConfigFile(path)
    config.load()
    config.append("port", [{"device": "/dev/b", "target": "h:2"}])
    text = path.read_text()
    assert text.startswith("# inline\n")
    assert [p.device for p in load(path).ports] == ["/dev/a", "/dev/b"]


def test_editor_removes_one_table_with_its_comment(tmp_path: Path) -> None:
    path = tmp_path / "vcom.toml"
    text = ('# file comment\n\n# about a\n[[port]]\ndevice = "/dev/a"\ntarget = "h:1"\n\n'
            '# about b\n[[port]]\ndevice = "/dev/b"  # keep this\ntarget = "h:2"\n\n'
            '[[share]]\ndevice = "sim:echo"\n')
    path.write_text(text)
    config = ConfigFile(path)
    config.load()
    assert config.remove("port", "/dev/a")
    assert path.read_text() == ('# file comment\n\n# about b\n[[port]]\ndevice = "/dev/b"  # keep this\n'
                                'target = "h:2"\n\n[[share]]\ndevice = "sim:echo"\n')
    assert config.remove("share", "SIM:echo")
    assert not config.remove("port", "/dev/none")
    assert [p.device for p in load(path).ports] == ["/dev/b"] and load(path).shares == []


def test_editor_removal_is_exact_when_a_value_line_looks_like_a_header(tmp_path: Path) -> None:
    """A multi-line array whose lines start with '[' would fool a line cut: the result is checked,
    and tomlkit does the edit instead."""
    path = tmp_path / "vcom.toml"
    path.write_text('[[port]]\ndevice = "/dev/a"\ntarget = "h:1"\nnotes = [\n["x"],\n]\n\n'
                    '[[port]]\ndevice = "/dev/b"\ntarget = "h:2"\n')
    config = ConfigFile(path)
    config.load()
    assert config.remove("port", "/dev/a")
    assert tomllib.loads(path.read_text()) == {"port": [{"device": "/dev/b", "target": "h:2"}]}


def test_link_of_an_entry_made_unusable_after_a_crash_goes_at_the_next_start(vcom: Vcom, tmp_path: Path) -> None:
    port = tmp_path / "ttyA"
    vcom.add(port, f"tcp://127.0.0.1:{free_port()}")
    for pid in vcom.manager_pids():
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not vcom.manager_pids(), 10, "the manager gone")
    path = vcom.home / "vcom.toml"
    path.write_text(path.read_text().replace("baud = 9600", 'baud = "9600"'))
    assert os.path.islink(port)
    vcom.add(tmp_path / "ttyB", f"tcp://127.0.0.1:{free_port()}")  # starts the manager
    assert not os.path.lexists(port)
    assert 'baud = "9600"' in path.read_text()  # the entry itself stays for the user to fix


def test_editor_keeps_a_linked_file_linked_and_its_mode(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere.toml"
    real.write_text('[[port]]\ndevice = "/dev/a"\ntarget = "h:1"\n\n[[port]]\ndevice = "/dev/b"\ntarget = "h:2"\n')
    real.chmod(0o640)
    path = tmp_path / "vcom.toml"
    path.symlink_to(real)
    config = ConfigFile(path)
    config.load()
    assert config.remove("port", "/dev/a")
    config.append("port", [{"device": "/dev/c", "target": "h:3"}])
    assert path.is_symlink() and os.readlink(path) == str(real)
    assert real.stat().st_mode & 0o777 == 0o640
    assert [p.device for p in load(path).ports] == ["/dev/b", "/dev/c"]
