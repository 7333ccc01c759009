"""Build the interposer library (``preload.c``) with the system C compiler.

It is compiled on first use into a cache directory, named by a digest of
its source, so installing vcom needs no compiler and an upgrade never
replaces a library that running programs have mapped.  It links against
libc alone (``-z defs`` proves nothing else is needed; glibc before 2.34
kept dlsym in libdl, which is then added).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

SOURCE = "preload.c"
_FLAGS = ["-shared", "-fPIC", "-O2", "-fvisibility=hidden", "-Wl,-z,defs"]


class BuildError(Exception):
    """The library cannot be built; one-line reason."""


def source() -> bytes:
    return resources.files("vcom.interposer").joinpath(SOURCE).read_bytes()


def library(cache: Path) -> Path:
    """Path of the compiled library, building it when its source changed."""
    text = source()
    digest = hashlib.sha256(text).hexdigest()[:12]
    target = cache / f"libvcom-interposer-{digest}.so"
    if target.exists():
        return target
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        raise BuildError("no C compiler (cc) to build the interposer library; install gcc")
    cache.mkdir(parents=True, exist_ok=True)
    src = cache / f".libvcom-interposer-{digest}.{os.getpid()}.c"
    tmp = cache / f".libvcom-interposer-{digest}.{os.getpid()}.so"
    src.write_bytes(text)
    try:
        result = None
        for extra in ([], ["-ldl"]):
            result = subprocess.run([compiler, *_FLAGS, "-o", str(tmp), str(src), *extra],
                                    capture_output=True, text=True, timeout=120)
            if result.returncode == 0:
                break
        assert result is not None
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no message"])[-1]
            raise BuildError(f"building the interposer library failed: {last}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)  # atomic: a program never maps half a library
    finally:
        for leftover in (src, tmp):
            leftover.unlink(missing_ok=True)
    return target
