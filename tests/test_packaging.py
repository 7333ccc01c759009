"""`make install DESTDIR=... PREFIX=...` gives a tree a distribution can package.

The tree is staged under a temporary DESTDIR with a PREFIX that is itself a temporary directory, so it
can then be copied to its final place (PREFIX) without touching this machine's system directories.
Checked: no file names the staging directory, the source tree, the build's temporary copy or the
build interpreter; the copied tree runs (help, a manager started by `vcom add`, a port); the installed
units pass `systemd-analyze verify`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from peers import Vcom, free_port

REPO = Path(__file__).resolve().parent.parent
INSTALL_TIMEOUT = 300  # pip fetches and installs vcom's libraries into the tree


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=kwargs.pop("timeout", 60), **kwargs)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(staging root, PREFIX): `make install` staged, then the PREFIX tree copied to where it belongs."""
    if shutil.which("make") is None or shutil.which("systemd-analyze") is None:
        pytest.fail("make and systemd-analyze (Debian packages make, systemd) are needed")
    base = tmp_path_factory.mktemp("pkg")
    stage, prefix = base / "stage", base / "final"
    result = run(["make", "-s", "-C", str(REPO), "install", f"DESTDIR={stage}", f"PREFIX={prefix}",
                  f"PYTHON={sys.executable}"], timeout=INSTALL_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    shutil.copytree(stage / prefix.relative_to("/"), prefix, symlinks=True)
    return stage, prefix


def build_paths(stage: Path) -> list[bytes]:
    """Paths of the build machine that must not appear in what is installed."""
    paths = {str(stage), str(REPO), sys.executable, os.path.realpath(sys.executable), sys.prefix}
    if sys.base_prefix not in ("/usr", "/usr/local"):
        paths.add(sys.base_prefix)  # a pyenv or similar interpreter of the build machine
    return sorted(p.encode() for p in paths)


def leaks(root: Path, forbidden: list[bytes]) -> list[str]:
    """Files (text or byte code) and symlinks under root that name a forbidden path or a temporary build copy."""
    temporary = re.compile(rb"/tmp/tmp[\w.-]{6,}")
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            data = os.readlink(path).encode()
        elif path.is_file():
            data = path.read_bytes()
        else:
            continue
        for bad in forbidden:
            if bad in data:
                found.append(f"{path}: {bad.decode()}")
        if temporary.search(data):
            found.append(f"{path}: {temporary.search(data).group().decode()}")  # type: ignore[union-attr]
    return found


def test_staged_tree_names_no_build_or_staging_path(installed: tuple[Path, Path]) -> None:
    stage, prefix = installed
    assert leaks(stage, build_paths(stage)) == []
    launcher = (stage / prefix.relative_to("/") / "bin" / "vcom").read_text()
    assert launcher.startswith("#!/usr/bin/python3 -s\n")
    assert not list(stage.rglob("pyvenv.cfg")) and not list(stage.rglob("direct_url.json"))
    assert list(stage.rglob("vcom/cli/__pycache__/__init__.cpython-*.pyc")), "byte code is compiled at install time"
    assert os.readlink(stage / "usr/local/bin/vcom") == f"{prefix}/bin/vcom"


def test_the_check_finds_a_leak(tmp_path: Path) -> None:
    """The grep above means something: a staging path in byte code or a build copy in a text is found."""
    (tmp_path / "a.pyc").write_bytes(b"\x00\x01" + str(tmp_path / "stage").encode() + b"/x.py\x00")
    (tmp_path / "direct_url.json").write_text('{"url": "file:///tmp/tmpab12cd34"}')
    found = leaks(tmp_path, [str(tmp_path / "stage").encode()])
    assert len(found) == 2 and any("a.pyc" in f for f in found) and any("tmpab12cd34" in f for f in found)


def test_copied_tree_runs(installed: tuple[Path, Path], tmp_path: Path) -> None:
    _, prefix = installed
    vcom_bin = prefix / "bin" / "vcom"
    helped = run([str(vcom_bin), "--help"])
    assert helped.returncode == 0 and "vcom share" in " ".join(helped.stdout.split()), helped.stderr
    driver = Vcom(tmp_path / "h")
    try:
        env = driver.env
        port = tmp_path / "ttyV0"
        added = run([str(vcom_bin), "add", str(port), f"tcp://127.0.0.1:{free_port()}"], env=env)
        assert added.returncode == 0, added.stderr + driver.log_tail()
        assert os.path.islink(port) and os.path.realpath(port).startswith("/dev/pts/")
        listing = run([str(vcom_bin), "list", "--paths"], env=env)
        assert listing.stdout.splitlines() == [str(port)]
        # The manager that `vcom add` started runs from the copied tree, not from the sources.
        pids = driver.manager_pids()
        assert pids
        for pid in pids:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert f"PYTHONPATH={prefix}/lib/vcom".encode() in environ
    finally:
        run([str(vcom_bin), "shutdown"], env=driver.env)
        driver.close()


def test_installed_units_verify(installed: tuple[Path, Path], tmp_path: Path) -> None:
    stage, prefix = installed
    units = stage / "etc/systemd/system"
    manager = (units / "vcom.service").read_text()
    assert f"\nExecStart={prefix}/bin/vcom run\n" in manager and "\nRestartPreventExitStatus=78\n" in manager
    share = tmp_path / "vcom-share@ttyUSB0.service"  # verify needs an instance to expand %i
    share.write_text((units / "vcom-share@.service").read_text())
    for unit in (units / "vcom.service", share):
        result = run(["systemd-analyze", "verify", str(unit)], cwd="/")
        assert (result.returncode, result.stdout + result.stderr) == (0, ""), unit


def test_uninstall_leaves_nothing(installed: tuple[Path, Path]) -> None:
    stage, prefix = installed
    result = run(["make", "-s", "-C", str(REPO), "uninstall", f"DESTDIR={stage}", f"PREFIX={prefix}"])
    assert result.returncode == 0, result.stderr
    assert [p for p in stage.rglob("*") if not p.is_dir()] == []
