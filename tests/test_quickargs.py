"""The command lines vcom reads without typer (vcom/quickargs.py) mean what typer reads in them.

Each quick shape is held against the click command typer builds from the same function: same
positionals, same option spellings, same flags.  Then a corpus of command lines is read both ways; a
line the quick reader takes must give typer's parameters exactly, and the lines it must leave to typer
(help, unknown options, a missing value...) are checked to be left.  Last, a real `vcom add` and
`vcom remove` are run against a manager, and shown to work without importing typer at all.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from peers import PYTHON, Vcom, free_port

from vcom import cli, quickargs


def click_command(name: str):  # noqa: ANN201 - a click.Command of typer's (vendored) click
    import typer.main

    group = typer.main.get_command(cli._typer_app([name]))
    return group.commands[name]  # type: ignore[attr-defined]


def shape_from_click(command) -> quickargs.Shape:  # noqa: ANN001
    positionals, values, flags = [], {}, {}
    for param in command.params:
        if param.param_type_name == "argument":
            positionals.append(param.name)
            continue
        if param.name == "help":
            continue
        # Anything the quick reader does not do must not be asked of it.
        assert (param.multiple, param.nargs, param.envvar, param.callback, param.prompt, param.count) == (
            False, 1, None, None, None, False), f"{param.opts}: beyond what quickargs reads"
        assert param.default is None, f"{param.opts}: quickargs gives absent options None"
        if param.is_flag:
            flags.update({opt: (param.name, True) for opt in param.opts})
            flags.update({opt: (param.name, False) for opt in param.secondary_opts})
        else:
            values.update({opt: param.name for opt in param.opts})
    names = tuple(p.name for p in command.params if p.name != "help")
    return quickargs.Shape(names, tuple(positionals), values, flags)


@pytest.mark.parametrize("name", sorted(cli.QUICK))
def test_each_quick_shape_is_typers(name: str) -> None:
    function, shape = cli.QUICK[name]
    expected = shape_from_click(click_command(name))
    assert (shape.positionals, dict(shape.values), dict(shape.flags)) == (
        expected.positionals, dict(expected.values), dict(expected.flags))
    assert sorted(shape.parameters) == sorted(expected.parameters)


D, T = "/tmp/ttyQ", "tcp://127.0.0.1:4001"
READ_ALIKE = [
    ["add", D, T],
    ["add", D, T, "--baud", "19200", "--connect", "always"],
    ["add", "--baud=19200", D, "--parity", "even", T, "--data-bits", "7"],
    ["add", D, T, "--pin-baud", "--no-hangup-on-dcd", "--emulate-baud", "--tls-insecure"],
    ["add", D, T, "--no-pin-baud", "--pin-baud"],  # the last one counts
    ["add", D, T, "--baud", "9600", "--baud", "115200"],
    ["add", D, T, "--owner="],  # an empty value, given with '='
    ["add", D, T, "--linger=-1"],  # a value with '=' may start with '-'
    ["add", "--from", "ports.toml", "--baud", "4800", "--split-of", "/dev/ttyV0"],
    ["add", "-", T],  # '-' is a positional
    ["add", D, T, "--tls-ca", "ca.pem", "--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-server-name", "n"],
    ["add", D, T, "--mode", "0600", "--group", "dialout", "--retry-max", "3", "--peer-timeout", "0",
     "--stop-bits", "1.5"],
    ["add"],
    ["add", D],
    ["remove", D],
    ["remove"],
]


@pytest.mark.parametrize("argv", READ_ALIKE, ids=" ".join)
def test_a_plain_line_reads_as_typer_reads_it(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("_VCOM_COMPLETE", "_TYPER_COMPLETE_ARGS"):
        monkeypatch.delenv(variable, raising=False)
    _, shape = cli.QUICK[argv[0]]
    quick = quickargs.read(shape, argv[1:])
    assert quick is not None, f"{argv} was left to typer"
    context = click_command(argv[0]).make_context(argv[0], argv[1:])
    assert quick == context.params


LEFT_TO_TYPER = [
    ["add", D, T, "--help"],
    ["add", "--help"],
    ["add", D, T, "--bogus"],
    ["add", D, T, "--bogus=1"],
    ["add", D, T, "-b", "1"],  # a short option
    ["add", D, T, "--baud"],  # no value
    ["add", D, T, "--baud", "-1"],  # a value that looks like an option
    ["add", D, T, "--pin-baud=yes"],  # a flag given a value
    ["add", D, T, "extra"],
    ["add", "--", D, T],
    ["remove", D, D],
    ["remove", D, "--baud", "1"],
]


@pytest.mark.parametrize("argv", LEFT_TO_TYPER, ids=" ".join)
def test_anything_else_is_left_to_typer(argv: list[str]) -> None:
    _, shape = cli.QUICK[argv[0]]
    assert quickargs.read(shape, argv[1:]) is None


def test_shell_completion_is_left_to_typer(monkeypatch: pytest.MonkeyPatch) -> None:
    _, shape = cli.QUICK["add"]
    assert quickargs.read(shape, [D, T]) is not None
    monkeypatch.setenv("_VCOM_COMPLETE", "complete_bash")
    assert quickargs.read(shape, [D, T]) is None


def imported_modules(vcom: Vcom, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    run = subprocess.run([PYTHON, "-X", "importtime", "-m", "vcom", *args], env=vcom.env, capture_output=True,
                         text=True, timeout=60)
    names = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    return run, names


def test_add_and_remove_run_without_typer(vcom: Vcom, tmp_path) -> None:  # noqa: ANN001
    vcom.start_manager()
    device = tmp_path / "ttyQ0"
    target = f"tcp://127.0.0.1:{free_port()}"
    added, modules = imported_modules(vcom, "add", str(device), target, "--baud", "19200", "--connect=on-open")
    assert added.returncode == 0, added.stderr[-2000:]
    assert "typer" not in modules and "vcom.cli" in modules
    assert added.stdout.strip() == f"{device} -> {target}"
    assert vcom.query(device)["settings"]["baud"] == 19200
    listed = json.loads(vcom.ok("list", "--json").stdout)
    assert [(p["device"], p["connect"]) for p in listed["ports"]] == [(str(device), "on-open")]

    removed, modules = imported_modules(vcom, "remove", str(device))
    assert removed.returncode == 0, removed.stderr[-2000:]
    assert "typer" not in modules
    assert vcom.query()["ports"] == []

    # Help, and a line the quick reader leaves, still get typer's parser and vcom's wording.
    helped, modules = imported_modules(vcom, "add", "--help")
    assert helped.returncode == 0 and "--tls-server-name" in helped.stdout and "typer" in modules
    refused = vcom.cli("add", str(device), target, "--pin-baud=yes")
    assert refused.returncode == 2 and refused.stderr.startswith("vcom: ") and "--pin-baud" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert sys.modules.get("typer") is not None  # this process built typer's parsers above
