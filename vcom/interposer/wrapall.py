"""``vcom wrap-all on|off|status``: the interposer library for every dynamically linked program.

The dynamic loader reads ``/etc/ld.so.preload`` at every program start
(setuid programs included) and loads what it lists.  Listing the library
there gives every such program exact termios, modem lines and break on vcom
ports, however it is started (systemd units, desktop launchers, vendor
tools).  What that costs and risks is in the README: the library is in
every process, so it stays out of everything but vcom ports.

Rules kept here, because a mistake shows in every program of the machine:

* the library is installed at a fixed path (``LIBRARY``) and replaced by an
  atomic rename, so the listed file never goes missing or half-written (the
  loader prints an error at every program start for a missing one);
* it is tried with ``LD_PRELOAD`` on a real program before it is listed;
* the file's other entries and layout are kept; ``off`` removes only ours
  (and the file, if nothing else is left in it);
* the file is replaced by an atomic rename too, except where it is a mount
  point (a bind mount in a test namespace), which can only be written in place.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .build import library

PRELOAD_FILE = Path("/etc/ld.so.preload")
LIBRARY = Path(os.environ.get("VCOM_LIBDIR") or "/usr/local/lib") / "libvcom-interposer.so"


class WrapAllError(Exception):
    """A refusal, with a one-line reason."""


def status() -> str:
    listed = LIBRARY.as_posix() in _entries(_read())
    if not listed:
        return f"off ({LIBRARY} is not listed in {PRELOAD_FILE})"
    if not LIBRARY.exists():
        return (f"on, but {LIBRARY} is missing: every program start prints an error; "
                "run 'vcom wrap-all off'")
    return f"on ({LIBRARY} is listed in {PRELOAD_FILE})"


def enable(cache: Path) -> str:
    _require_root("on")
    built = library(cache)
    _install_library(built)
    _try_library()
    text = _read()
    if LIBRARY.as_posix() in _entries(text):
        return status()
    if text and not text.endswith("\n"):
        text += "\n"
    _write(text + LIBRARY.as_posix() + "\n")
    return status()


def disable() -> str:
    _require_root("off")
    text = _read()
    if LIBRARY.as_posix() not in _entries(text):
        return status()
    kept = []
    for line in text.splitlines(keepends=True):
        tokens = line.split()
        if LIBRARY.as_posix() not in tokens:
            kept.append(line)
        elif any(token != LIBRARY.as_posix() for token in tokens):
            kept.append(" ".join(t for t in tokens if t != LIBRARY.as_posix()) + "\n")
    rest = "".join(kept)
    if rest.strip():
        _write(rest)
    else:
        _remove()
    return status()


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise WrapAllError(f"wrap-all {what}: only root can change {PRELOAD_FILE}")


def _read() -> str:
    try:
        return PRELOAD_FILE.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return ""


def _entries(text: str) -> list[str]:
    return text.split()


def _install_library(built: Path) -> None:
    LIBRARY.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".libvcom-interposer.", dir=LIBRARY.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(built, "rb") as src:
            shutil.copyfileobj(src, out)
        os.chmod(tmp, 0o755)
        os.replace(tmp, LIBRARY)  # programs that mapped the old file keep it; new ones get this one
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _try_library() -> None:
    """Load the library into a real program before every program on the machine gets it."""
    probe = shutil.which("true") or "/bin/true"
    result = subprocess.run([probe], env={**os.environ, "LD_PRELOAD": LIBRARY.as_posix()},
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0 or result.stderr:
        raise WrapAllError(f"the interposer library does not load cleanly ({result.stderr.strip() or 'exit '}"
                           f"{result.returncode if not result.stderr else ''}); {PRELOAD_FILE} left as it was")


def _write(text: str) -> None:
    data = text.encode("utf-8", errors="surrogateescape")
    fd, tmp = tempfile.mkstemp(prefix=".ld.so.preload.", dir=PRELOAD_FILE.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o644)
        try:
            os.replace(tmp, PRELOAD_FILE)
            return
        except OSError as exc:
            if exc.errno not in (errno.EBUSY, errno.EXDEV):
                raise
        # A mount point (bind-mounted file): it can only be written in place.
        with open(PRELOAD_FILE, "wb") as out:
            out.write(data)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _remove() -> None:
    try:
        PRELOAD_FILE.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.EBUSY, errno.EXDEV):
            raise
        PRELOAD_FILE.write_bytes(b"")  # a mount point: empty it instead
