"""Command lines that provisioning scripts run in loops (``vcom add DEVICE TARGET --baud 19200``), read
without typer.

Importing typer and building a command's parser takes about as long as the rest of a ``vcom add``
(Python's start, vcom's own modules, the request to the manager) together.  A :class:`Shape` describes
one command's arguments in click's terms (positionals in order, ``--name VALUE`` / ``--name=VALUE``,
``--flag`` / ``--no-flag``); :func:`read` turns a command line of that shape into the keyword arguments
typer would pass to the command's function.

The reading is deliberately partial: anything it does not recognise (``--help``, an unknown or short
option, a missing value, a value that looks like an option, ``--``, one positional too many, shell
completion) makes it return None, and the caller hands the command line to typer, whose parse and
wording are the reference.  So a line read here either means exactly what typer would read, or typer
reads it.  ``tests/test_quickargs.py`` holds every shape against the parser typer builds from the same
function, so that an option added to the command cannot be read differently here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Shape:
    """One command's arguments: every parameter of its function defaults to None (absent)."""

    parameters: tuple[str, ...]  # the function's parameters, in order
    positionals: tuple[str, ...]  # parameters given by position, in order
    values: Mapping[str, str] = field(default_factory=dict)  # "--option" -> parameter (takes one value)
    flags: Mapping[str, tuple[str, bool]] = field(default_factory=dict)  # "--flag" -> (parameter, value)

    @classmethod
    def of(cls, function: Callable[..., Any], positionals: int, flags: Mapping[str, bool] = {},  # noqa: B006
           spelled: Mapping[str, str] = {}) -> Shape:  # noqa: B006
        """The shape of `function`: its first `positionals` parameters are positional, the ones named in
        `flags` are booleans (True: with a --no- form), every other one takes a value.  Options are
        spelled --parameter-name unless `spelled` says otherwise."""
        code = function.__code__
        parameters = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
        values: dict[str, str] = {}
        flag_forms: dict[str, tuple[str, bool]] = {}
        for name in parameters[positionals:]:
            option = spelled.get(name, "--" + name.replace("_", "-"))
            if name in flags:
                flag_forms[option] = (name, True)
                if flags[name]:
                    flag_forms["--no-" + option[2:]] = (name, False)
            else:
                values[option] = name
        return cls(tuple(parameters), tuple(parameters[:positionals]), values, flag_forms)


# Set by typer's shell completion: those invocations are typer's alone.
_COMPLETION_VARIABLES = ("_VCOM_COMPLETE", "_TYPER_COMPLETE_ARGS")


def read(shape: Shape, argv: list[str]) -> dict[str, Any] | None:
    """The keyword arguments of the command line `argv` (without the command's name), or None when
    typer must read it."""
    if any(name in os.environ for name in _COMPLETION_VARIABLES):
        return None
    given: dict[str, Any] = dict.fromkeys(shape.parameters)
    place = 0
    at = 0
    while at < len(argv):
        word = argv[at]
        at += 1
        if not word.startswith("-") or word == "-":
            if place == len(shape.positionals):
                return None
            given[shape.positionals[place]] = word
            place += 1
            continue
        option, equals, value = word.partition("=")
        if option in shape.flags and not equals:
            name, setting = shape.flags[option]
            given[name] = setting
            continue
        if option not in shape.values:
            return None  # --help, --, a short or unknown option, a flag given a value: typer's wording
        if not equals:
            if at == len(argv) or argv[at].startswith("-"):
                return None  # no value, or one that may be meant as an option: typer decides
            value = argv[at]
            at += 1
        given[shape.values[option]] = value  # given twice: the last one counts, as in click
    return given
