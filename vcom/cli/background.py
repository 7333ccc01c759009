"""A manager started in the background when a command needs one (``vcom add``, ``vcom share``) and none
runs; also the environment in which a manager or keeper started from here finds this very package.  No
command is defined here, so that command modules may import it without registering anything early."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

from .. import control
from .common import _load_config, fail, manager_paths

_MANAGER_START_TIMEOUT = 15.0


def _python_env() -> dict[str, str]:
    """This environment, where `python -m vcom` finds the package where this command found it (the
    installed launcher puts its own library directory on sys.path; a child would not inherit that)."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # above vcom/cli/
    rest = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry and entry != here]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([here, *rest])}


def _ensure_manager() -> None:
    """Start a background manager unless one answers, and wait until it does."""
    where = manager_paths()
    try:
        where.check()
    except ValueError as exc:
        fail(str(exc))
    if control.manager_running(where.socket):
        return
    import subprocess
    _load_config(where)  # a broken file is reported here, in full, rather than as the manager's last words
    where.log.parent.mkdir(parents=True, exist_ok=True)
    env = _python_env()
    # The log names ports, peers' addresses and what they sent: for the manager's user only.
    descriptor = os.open(where.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    with contextlib.suppress(OSError):
        os.fchmod(descriptor, 0o600)  # also a log an older vcom created world-readable
    with open(descriptor, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "vcom", "run"],  # -P: not from the working directory
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, env=env,
            start_new_session=True, close_fds=True,
        )
    deadline = time.monotonic() + _MANAGER_START_TIMEOUT
    while time.monotonic() < deadline:
        if control.manager_running(where.socket):
            return
        if proc.poll() is not None:
            fail(f"the manager did not start: {_last_line(where.log)}")
        time.sleep(0.05)
    fail(f"the manager did not answer within {_MANAGER_START_TIMEOUT:g} s; see {where.log}")


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1].removeprefix("vcom: ") if lines else "no log"
