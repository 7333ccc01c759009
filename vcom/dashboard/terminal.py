"""The terminal side of ``vcom status --watch``: keys from a cbreak terminal, and the refresh loop.

One rich ``Live`` on the alternate screen, refreshed by hand (rich's own refresh runs in a thread; this
loop is the only clock), with the keyboard read through ``select`` so that waiting for keys never
delays a refresh and a refresh never swallows a key.  When the output is not a terminal, frames are
printed one after another.  Nothing here talks to the manager: the caller passes ``fetch``.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from rich.console import Console, RenderableType
from rich.live import Live

from .screen import Dashboard

_SEQUENCES = {"\x1b[5~": "pgup", "\x1b[6~": "pgdn"}
_SINGLE = {"\r": "enter", "\n": "enter", "\x7f": "backspace", "\x08": "backspace", "\x1b": "esc"}
_CSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


class KeyReader:
    """Turns bytes from a cbreak terminal into key names, waiting at most a given time."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def read(self, timeout: float) -> list[str]:
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return []
        data = os.read(self.fd, 1024)
        if not data:
            raise EOFError("the terminal went away")
        return split_keys(self._decoder.decode(data))


def split_keys(text: str) -> list[str]:
    """``"s\\x1b[6~q"`` -> ``["s", "pgdn", "q"]``; unknown escape sequences (arrows, F-keys) are dropped."""
    keys: list[str] = []
    i = 0
    while i < len(text):
        match = _CSI.match(text, i)
        if match:
            if match.group() in _SEQUENCES:
                keys.append(_SEQUENCES[match.group()])
            i = match.end()
            continue
        keys.append(_SINGLE.get(text[i], text[i]))
        i += 1
    return keys


@contextlib.contextmanager
def cbreak(fd: int) -> Iterator[None]:
    """Keys arrive one at a time and unechoed; the saved modes come back however the block ends."""
    saved = termios.tcgetattr(fd)
    try:
        # TCSANOW rather than setcbreak's default TCSAFLUSH: keys typed before the view came up are kept.
        tty.setcbreak(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


# -- the loop ----------------------------------------------------------------------------------------------------------


def run(
    fetch: Callable[[], Mapping[str, Any]],
    interval: float = 1.0,
    console: Console | None = None,
    *,
    keys_fd: int | None = None,
) -> None:
    """Show ``fetch()`` every ``interval`` seconds until ``q`` or Ctrl-C.

    Keys are read from ``keys_fd`` (default: standard input) when it is a terminal; otherwise the view just
    refreshes until interrupted.  An exception from ``fetch`` is shown on screen and the next interval retries.
    """
    console = console or Console()
    fd = _stdin_fd() if keys_fd is None else keys_fd
    keys = fd is not None and os.isatty(fd)
    try:
        with cbreak(fd) if keys and fd is not None else contextlib.nullcontext(), _display(console) as draw:
            reader = KeyReader(fd) if keys and fd is not None else None
            _loop(fetch, interval, console, draw, Dashboard(), reader)
    except (KeyboardInterrupt, EOFError):
        pass  # Ctrl-C is the other way out; the context managers already put the terminal back


@contextlib.contextmanager
def _display(console: Console) -> Iterator[Callable[[RenderableType], None]]:
    """How a frame reaches the screen: redrawn in place on a terminal, one after another anywhere else."""
    if not console.is_terminal:
        yield console.print
        return
    # Refreshed by hand: rich's automatic refresh runs in a thread and would race the key handling.
    with Live(console=console, screen=True, auto_refresh=False, redirect_stdout=False, redirect_stderr=False) as live:
        yield lambda frame: live.update(frame, refresh=True)


def _loop(
    fetch: Callable[[], Mapping[str, Any]],
    interval: float,
    console: Console,
    draw: Callable[[RenderableType], None],
    dashboard: Dashboard,
    reader: KeyReader | None,
) -> None:
    next_fetch = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= next_fetch:
            _refresh(fetch, dashboard, now)
            next_fetch = now + interval
        draw(dashboard.render(console.width, console.height))
        wait = next_fetch - time.monotonic()
        if reader is None:
            time.sleep(max(0.0, wait))
            continue
        for key in reader.read(wait):
            if not dashboard.handle_key(key):
                return


def _refresh(fetch: Callable[[], Mapping[str, Any]], dashboard: Dashboard, now: float) -> None:
    try:
        snapshot = fetch()
    except Exception as exc:  # the manager restarting must not end the view: show it and retry
        dashboard.fetch_failed(str(exc) or type(exc).__name__)
        return
    dashboard.update(snapshot, now)


def _stdin_fd() -> int | None:
    try:
        return sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        return None  # no stdin at all, or one without a descriptor
