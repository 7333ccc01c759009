"""The control socket between the CLI and the manager: the protocol and its client side.

One JSON object per line each way: ``{"cmd": "add", ...}`` answered by
``{"ok": true, ...}`` or ``{"ok": false, "error": "one line"}``.  A Unix
socket gives us the caller's credentials (SO_PEERCRED), so access is decided
by who the caller is, not by a secret: root, the manager's own user, and
members of group ``vcom``.  The manager's side is :mod:`vcom.controlserver`;
this module imports no asyncio, so that a ``vcom`` command starts fast.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CONTROL_GROUP = "vcom"
MAX_REQUEST = 1 << 20


class ControlError(Exception):
    """The manager cannot be reached, or it refused the request."""


class NotRunning(ControlError):
    """Nobody listens on the control socket (no socket, or one left by a manager that died)."""


# -- client side ---------------------------------------------------------------------------------


def _send(path: Path, cmd: str, args: dict[str, Any], timeout: float | None) -> socket.socket:
    """Connect to the manager and send one request; ControlError when nobody listens or we may not."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise NotRunning(f"no vcom manager is running (nothing listens on {path})") from None
    except PermissionError:
        sock.close()
        raise ControlError(f"permission denied on {path}: only root and group '{CONTROL_GROUP}' may control vcom (one "
                           f"just added to the group must log in again, or run 'newgrp {CONTROL_GROUP}')") from None
    except BaseException:
        sock.close()
        raise
    return sock


def request(path: Path, cmd: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
    """Send one request and return the manager's answer; raises ControlError when nobody listens."""
    try:
        sock = _send(path, cmd, args, timeout)
        with sock:
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except TimeoutError:
        raise ControlError(f"the vcom manager did not answer within {timeout:g} s") from None
    except (BrokenPipeError, ConnectionResetError):
        raise ControlError("the vcom manager closed the connection without answering") from None
    if not data:
        raise ControlError("the vcom manager closed the connection without answering")
    return json.loads(data)


def stream(path: Path, cmd: str, **args: Any) -> Iterator[dict[str, Any]]:
    """Send one request whose answer is followed by events; yields the events until the manager ends them."""
    with _send(path, cmd, args, None) as sock, sock.makefile("rb") as lines:
        first = lines.readline()
        if not first:
            raise ControlError("the vcom manager closed the connection without answering")
        answer = json.loads(first)
        if not answer.get("ok"):
            raise ControlError(str(answer.get("error", "the manager refused the request")))
        for line in lines:
            yield json.loads(line)


def manager_running(path: Path) -> bool:
    try:
        return bool(request(path, "ping", timeout=5).get("ok"))
    except ControlError:
        return False
