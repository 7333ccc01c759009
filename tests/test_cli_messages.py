"""Every refusal of the `vcom` command: one line on stderr, in vcom's words, naming options as typed.

Each case runs the real command with a private VCOM_HOME.  A refusal must exit non-zero, print
exactly one line starting with "vcom: ", show no traceback, and use none of the wording of the
libraries underneath (the argument parser, the validation library, the codec, errno tables) nor the
internal names of settings (``client_buffer`` where the user typed ``--client-buffer``).
"""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import pytest
from peers import Vcom, free_port

from vcom.link import connect_failure

# Wording that belongs to a library, not to vcom.
LIBRARY_WORDING = [
    "Traceback", "Invalid value", "Input should", "is not one of", "Usage:", "Try '", "Error:", "No such option",
    "Missing argument", "Got unexpected", "requires an argument", "No such command", "Unknown error", "Errno",
    "codec", "x<=", "Value error", "is not a valid", "NoneType", "object has no attribute",
]
INTERNAL_NAMES = re.compile(r"\b(client_buffer|retry_max|split_of|data_bits|stop_bits|pin_baud|max_clients|"
                            r"slow_client|listen_host|listen_port|hangup_on_dcd|peer_timeout|idle_timeout)\b")

T = "tcp://127.0.0.1:1"  # a well-formed target; nothing connects in these cases

# (id, arguments with {d} = a device path, {f} = a file, {x} = a missing directory; expected text)
WITHOUT_MANAGER = [
    ("add-nothing", ["add"], "missing DEVICE"),
    ("add-no-target", ["add", "{d}"], "missing TARGET"),
    ("add-bad-target", ["add", "{d}", "nohost"], "missing port in 'nohost'"),
    ("add-bad-port", ["add", "{d}", "h:99999"], "out of range"),
    ("baud-zero", ["add", "{d}", T, "--baud", "0"], "--baud 0 must be a whole number between 1 and 20000000"),
    ("baud-text", ["add", "{d}", T, "--baud", "abc"], "--baud abc must be a whole number"),
    ("baud-no-value", ["add", "{d}", T, "--baud"], "--baud needs a value"),
    ("linger-text", ["add", "{d}", T, "--linger", "x"], "--linger x must be a number"),
    ("linger-negative", ["add", "{d}", T, "--linger", "-1"], "--linger -1 must be a number of seconds"),
    ("retry-max-huge", ["add", "{d}", T, "--retry-max", "1e9"], "--retry-max 1e9 must be a number of seconds"),
    ("retry-max-nan", ["add", "{d}", T, "--retry-max", "nan"], "--retry-max nan must be a finite number"),
    ("peer-timeout", ["add", "{d}", T, "--peer-timeout", "-5"], "--peer-timeout -5 must be a number of seconds"),
    ("connect", ["add", "{d}", T, "--connect", "sometimes"], "--connect sometimes must be one of on-open, always"),
    ("parity", ["add", "{d}", T, "--parity", "maybe"], "--parity maybe must be one of none, odd, even"),
    ("stop-bits", ["add", "{d}", T, "--stop-bits", "3"], "--stop-bits 3 must be one of 1, 1.5, 2"),
    ("data-bits", ["add", "{d}", T, "--data-bits", "9"], "--data-bits 9 must be 5, 6, 7 or 8"),
    ("mode-octal", ["add", "{d}", T, "--mode", "999"], "--mode 999 is not an octal number"),
    ("mode-range", ["add", "{d}", T, "--mode", "7777"], "--mode 7777 is out of range 0000-0777"),
    ("owner-empty", ["add", "{d}", T, "--owner", ""], "--owner '' must be a user or group name"),
    ("unknown-option", ["add", "{d}", T, "--bad"], "unknown option --bad; did you mean --baud"),
    ("extra-argument", ["add", "{d}", T, "extra"], "unexpected argument(s) extra"),
    ("missing-dir", ["add", "{x}/ttyV0", T], "does not exist"),
    ("taken-by-file", ["add", "{f}", T], "is taken by a regular file"),
    ("from-missing", ["add", "--from", "{x}/ports.toml"], "cannot read"),
    ("from-not-toml", ["add", "--from", "{f}"], "not valid TOML"),
    ("from-and-device", ["add", "--from", "{f}", "{d}"], "--from takes the ports from the file"),
    ("unknown-command", ["frob"], "unknown command 'frob'"),
    ("share-buffer", ["share", "sim:echo", "--client-buffer", "5"],
     "--client-buffer 5 must be a number of bytes between 1024"),
    ("share-buffer-text", ["share", "sim:echo", "--client-buffer", "lots"], "--client-buffer lots must be a whole"),
    ("share-clients", ["share", "sim:echo", "--max-clients", "0"], "--max-clients 0 must be a whole number between"),
    ("share-per-address", ["share", "sim:echo", "--max-clients-per-address", "0"],
     "--max-clients-per-address 0 must be a whole number between 1 and 1024"),
    ("share-idle", ["share", "sim:echo", "--idle-timeout", "soon"], "--idle-timeout soon must be a number"),
    ("share-protocol", ["share", "sim:echo", "--protocol", "http"], "--protocol http must be one of rfc2217"),
    ("share-slow", ["share", "sim:echo", "--slow-client", "wait"], "--slow-client wait must be one of drop"),
    ("share-control", ["share", "sim:echo", "--control", "last"], "--control last must be one of all, first"),
    ("share-listen-port", ["share", "sim:echo", "--listen", "127.0.0.1:99999"],
     "--listen 127.0.0.1:99999: the port must be a number"),
    ("share-listen-host", ["share", "sim:echo", "--listen", "no host:1"],
     "--listen 'no host' is not an IP address or host name"),
    ("share-listen-v6", ["share", "sim:echo", "--listen", "[::1"], "--listen '[::1': unclosed '['"),
    ("share-unknown-sim", ["share", "sim:nope", "--foreground", "--listen", "127.0.0.1:{port}"],
     "unknown simulated device"),
    ("watch-interval", ["status", "--watch", "--interval", "0"], "--interval 0 must be at least 0.1"),
    ("watch-interval-text", ["status", "--watch", "--interval", "soon"], "--interval soon must be a number"),
    ("monitor-no-manager", ["monitor", "{d}"], "no vcom manager is running"),
    ("monitor-output", ["monitor", "{d}", "--output", "{x}/log"], "--output"),
    ("remove-nothing", ["remove", "{d}"], "is not a vcom port"),
    ("unshare-nothing", ["unshare", "sim:echo"], "is not a vcom share"),
    ("shutdown-no-manager", ["shutdown"], "no vcom manager is running"),
    ("run-log-level", ["run", "--log-level", "loud"], "--log-level loud must be debug, info, warning or error"),
    ("run-log-format", ["run", "--log-format", "xml"], "--log-format xml must be text or json"),
    ("run-metrics", ["run", "--metrics", "nohost"], "--metrics nohost: "),
    ("demo-seconds", ["demo", "--seconds", "x"], "--seconds x must be a number"),
    ("list-option", ["list", "--bogus"], "unknown option --bogus"),
    ("status-no-manager-device", ["monitor"], "missing DEVICE"),
]

WITH_MANAGER = [
    ("add-twice", ["add", "{p}", T], "is already a vcom port (vcom remove"),
    ("remove-unknown", ["remove", "{d}"], "is not a vcom port"),
    ("status-unknown", ["status", "{d}"], "is not a vcom port or share"),
    ("split-of-unknown", ["add", "{d}", T, "--split-of", "{d}2"], "not a vcom port"),
    ("split-of-elsewhere", ["add", "{d}", "tcp://127.0.0.1:2", "--split-of", "{p}"], "it reaches"),
    ("unshare-unknown", ["unshare", "sim:gps"], "is not shared"),
    ("monitor-unknown", ["monitor", "{d}"], "is not a running vcom port"),
]


def check_refusal(vcom: Vcom, tmp_path: Path, args: list[str], expected: str) -> None:
    some_file = tmp_path / "notes.txt"
    some_file.write_text("[[port]\nnot toml\n")
    values = {"d": str(tmp_path / "ttyV9"), "f": str(some_file), "x": str(tmp_path / "missing"),
              "p": str(tmp_path / "ttyP"), "port": str(free_port())}
    argv = [arg.format(**values) for arg in args]
    assert_vcom_words(f"vcom {' '.join(argv)}", vcom.cli(*argv), tmp_path, expected.format(**values))


def assert_vcom_words(command: str, result: subprocess.CompletedProcess[str], tmp_path: Path, expected: str) -> None:
    shown = f"`{command}` -> {result.returncode}, stdout {result.stdout!r}, stderr {result.stderr!r}"
    assert result.returncode != 0, shown
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vcom: "), shown
    message = lines[0].replace(str(tmp_path), "TMP")
    for words in LIBRARY_WORDING:
        assert words not in message + result.stdout, f"library wording {words!r}: {shown}"
    assert not INTERNAL_NAMES.search(message), f"internal name: {shown}"
    assert expected in lines[0], shown


@pytest.mark.parametrize(("args", "expected"), [c[1:] for c in WITHOUT_MANAGER], ids=[c[0] for c in WITHOUT_MANAGER])
def test_refusal_without_a_manager(vcom: Vcom, tmp_path: Path, args: list[str], expected: str) -> None:
    check_refusal(vcom, tmp_path, args, expected)
    assert not vcom.manager_pids(), "a refused command must not start a manager"


@pytest.fixture
def running(vcom: Vcom, tmp_path: Path) -> Vcom:
    """A manager with one port, tmp_path/ttyP."""
    vcom.add(tmp_path / "ttyP", T)
    return vcom


@pytest.mark.parametrize(("args", "expected"), [c[1:] for c in WITH_MANAGER], ids=[c[0] for c in WITH_MANAGER])
def test_refusal_with_a_manager(running: Vcom, tmp_path: Path, args: list[str], expected: str) -> None:
    check_refusal(running, tmp_path, args, expected)


@pytest.mark.parametrize(("stderr", "complaint"), [
    ("vcom: Invalid value for '--baud': Input should be greater than or equal to 1\n", "library wording"),
    ("vcom: No such option: --bad (Possible options: --baud, --pin-baud)\n", "library wording"),
    ("vcom: client_buffer 5 must be a number of bytes between 1024 and 67108864\n", "internal name"),
    ("Traceback (most recent call last):\n  File ...\nValueError: x\n", "one line"),
    ("vcom: connect to rfc2217://nohost:1: Unknown error -2\n", "library wording"),
])
def test_the_checks_catch_what_they_are_for(tmp_path: Path, stderr: str, complaint: str) -> None:
    """The checks above mean something: messages as they were before vcom reworded them fail them."""
    result = subprocess.CompletedProcess(["vcom"], 1, "", stderr)
    with pytest.raises(AssertionError) as info:
        assert_vcom_words("vcom", result, tmp_path, "")
    assert complaint in str(info.value) or (complaint == "one line" and "stderr" in str(info.value))


def test_help_names_every_side_and_no_type_placeholders() -> None:
    vcom = Vcom(Path("/tmp") / f"vcom-help-{free_port()}")
    try:
        top = vcom.ok("--help").stdout
        for words in ("RFC 2217", "raw TCP", "UDP", "vcom share", "VCOM_HOME", "/etc/vcom/vcom.toml",
                      "~/.config/vcom/vcom.toml", "wrap"):
            assert words in " ".join(top.split()), words
        for command in ("add", "remove", "list", "status", "share", "unshare", "monitor", "run", "demo", "shutdown"):
            text = vcom.ok(command, "--help").stdout
            assert "{" not in text and "<str>" not in text, f"vcom {command} --help:\n{text}"
        assert "--paths" in vcom.ok("list", "--help").stdout
        assert "--from" in vcom.ok("add", "--help").stdout
        assert ":PORT" in vcom.ok("share", "--help").stdout and "--foreground" in vcom.ok("share", "--help").stdout
    finally:
        vcom.close()


def test_unresolvable_host_in_vcoms_words() -> None:
    assert connect_failure(socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "nohost.invalid") == \
        "cannot resolve host nohost.invalid"
    assert connect_failure(socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"), "h") == \
        "cannot resolve host h (temporary failure in name resolution)"
    refused = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1)")
    assert connect_failure(refused, "h") == "Connection refused"
