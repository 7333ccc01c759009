"""Where vcom keeps its files.

``VCOM_HOME`` relocates everything vcom writes (config, control socket, pid
file, background log), so that several managers, and the tests, can run side
by side without seeing each other.  Without it, root uses the system places
(``/etc/vcom``, ``/run/vcom``) and other users their XDG directories.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107
SYSTEM_RUN = Path("/run/vcom")  # the system manager's (vcom.service) sockets; preload.c names it too


@dataclass(frozen=True, slots=True)
class Paths:
    config: Path
    socket: Path
    pid: Path
    log: Path
    interposer: Path  # the interposer's socket (exact termios, modem lines, break from programs)
    cache: Path  # the compiled interposer library

    def check(self) -> None:
        if len(os.fsencode(self.socket)) > _MAX_SOCKET_PATH:
            raise ValueError(
                f"control socket path {self.socket} is longer than {_MAX_SOCKET_PATH} bytes; use a shorter VCOM_HOME"
            )


def resolve() -> Paths:
    home = os.environ.get("VCOM_HOME")
    if home:
        base = Path(home).absolute()
        return Paths(base / "vcom.toml", base / "vcom.sock", base / "vcom.pid", base / "vcom.log",
                     base / "interposer.sock", base / "lib")
    if os.geteuid() == 0:
        return system()
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "vcom"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    run = Path(runtime) / "vcom" if runtime else Path.home() / ".local" / "state" / "vcom"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vcom"
    return Paths(config / "vcom.toml", run / "vcom.sock", run / "vcom.pid", run / "vcom.log",
                 run / "interposer.sock", cache)


def system() -> Paths:
    """The system manager's files (vcom.service, or root's `vcom run`)."""
    run = SYSTEM_RUN
    return Paths(Path("/etc/vcom/vcom.toml"), run / "vcom.sock", run / "vcom.pid", run / "vcom.log",
                 run / "interposer.sock", Path("/var/cache/vcom"))


def for_commands(system_paths: Paths | None = None) -> Paths:
    """The files of the manager that a command (status, add, remove, monitor...) addresses: the user's own
    manager's when it answers, else the system manager's when its control socket lets this user in (root
    and members of group vcom), else the user's own (a command that needs a manager starts it there).

    Without this, a member of group vcom was admitted to the system manager's control socket but never
    reached it: `vcom status` said no manager runs while vcom.service did, and `vcom add /dev/ttyV0`
    started a manager of the user's own that may not create /dev/ttyV0.  Not with VCOM_HOME, which
    names the one manager meant, nor for root, whose own manager is the system one."""
    where = resolve()
    system_paths = system_paths or system()
    return system_paths if _system_instead(where.socket, system_paths.socket) else where


def is_system(where: Paths) -> bool:
    """Whether ``where`` names the system manager (which runs as root, for every user of the machine)."""
    return where.socket == SYSTEM_RUN / "vcom.sock"


def interposer_for_programs(where: Paths, system_socket: Path = SYSTEM_RUN / "interposer.sock") -> Path:
    """The interposer socket that a user's wrapped programs ask: the user's own manager's when one answers
    there, else the system manager's when it answers (its ports are made by root, and any user's program
    may ask it about the ports it holds), else the user's own (the calls then run as on a plain pty).

    Without this, a user's `vcom wrap` on a port of vcom.service asked a manager that does not run, and
    the program got no parity.  Not with VCOM_HOME, which names the one manager meant."""
    return system_socket if _system_instead(where.interposer, system_socket) else where.interposer


def system_refuses() -> bool:
    """Whether the system manager runs but its control socket turns this user away (not in group vcom)."""
    return probe(system().socket) == "refused"


def _system_instead(own: Path, system_socket: Path) -> bool:
    """Whether to ask the system manager's ``system_socket`` rather than one's ``own``: only when one's own
    does not answer and the system's does, and never with VCOM_HOME (it names the one manager meant)."""
    if os.environ.get("VCOM_HOME") or own == system_socket:
        return False
    return not _answers(own) and _answers(system_socket)


def _answers(path: Path) -> bool:
    """Whether a manager listens on the unix socket ``path`` and lets this user in (a file left by one that
    died does not answer; a control socket of group vcom refuses others with EACCES)."""
    return probe(path) == "answers"


def probe(path: Path) -> str:
    """"answers", "refused" (it exists but this user may not connect: a permission) or "absent"."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except PermissionError:
            return "refused"
        except OSError:
            return "absent"
    return "answers"
