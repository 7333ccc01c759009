"""The commands addressed to the running manager as a whole, not to one port or share: read the TLS files
again (as SIGHUP does), and stop."""

from __future__ import annotations

import sys
import time

from . import command
from .common import _ask, manager_paths


@command(short_help="Read TLS certificates and keys again, without dropping anyone")
def reload() -> None:
    """Make the manager read the TLS certificates, keys and CAs of every port and share again (as SIGHUP
    does): new connections use them, connected clients and links stay.  Files that cannot be used are
    named, and the ones read before stay in use (exit 1)."""
    answer = _ask("reload")
    problems = answer.get("problems") or []
    print(f"TLS files read again: {len(answer.get('ports') or [])} port(s), {len(answer.get('shares') or [])} "
          "share(s); nobody was disconnected")
    for problem in problems:
        print(f"vcom: {problem} (the files read before stay in use)", file=sys.stderr)
    if problems:
        raise SystemExit(1)


@command(short_help="Stop the running manager (its ports go until it runs again)")
def shutdown() -> None:
    """Stop the running manager; its ports are removed until it starts again."""
    where = manager_paths()
    _ask("shutdown")
    # The manager removes its socket last, after every port: wait for that, so the ports are gone on return.
    deadline = time.monotonic() + 15
    while where.socket.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
