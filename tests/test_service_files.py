"""The systemd units, udev rules and `make install-system` / `make uninstall`.

Everything is installed into a temporary DESTDIR, never onto this machine.
The units are checked by ``systemd-analyze verify`` (which also insists that
ExecStart names an executable, so a stand-in ``vcom`` is put at the PREFIX).
The rules are run by ``udevadm test`` against a real tty and a real network
interface from /sys; udevadm reads its rules only from the fixed system
directories and writes /dev/char and /run/udev as it goes, so each run happens
in a private mount namespace where those directories are replaced by the
rules under test and empty tmpfs mounts.

Needs the Debian packages systemd (systemd-analyze), udev (udevadm), make and
util-linux/mount (unshare, mount); a missing tool fails the test.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNITS = ("vcom.service", "vcom-share@.service")
RULES = ("90-vcom-share.rules", "91-vcom-net.rules")
UNIT_DIR = "etc/systemd/system"
RULES_DIR = "etc/udev/rules.d"
TIMEOUT = 60
# Builds and installs the package into a fresh venv.  The test that does it gets a pytest timeout
# above this and its other steps, so that make's own deadline, with its message, is the one that fires.
INSTALL_TIMEOUT = 240


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install the Debian package {package}")
    return path


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=kwargs.pop("timeout", TIMEOUT), **kwargs)


def make(*targets: str, destdir: Path, timeout: float = TIMEOUT, **variables: str) -> None:
    args = [tool("make", "make"), "-s", "-C", str(REPO), *targets, f"DESTDIR={destdir}", f"PYTHON={sys.executable}"]
    args += [f"{key}={value}" for key, value in variables.items()]
    result = run(args, timeout=timeout)
    assert result.returncode == 0, f"make {' '.join(targets)} failed:\n{result.stdout}\n{result.stderr}"


def files_under(root: Path) -> list[Path]:
    """Everything but directories (files and symlinks, dangling ones included)."""
    return sorted(p for p in root.rglob("*") if p.is_symlink() or not p.is_dir())


# --- systemd units -------------------------------------------------------------------------------------------------


@pytest.fixture
def staged_units(tmp_path: Path) -> tuple[Path, Path]:
    """Units and rules installed under tmp_path/root, with a stand-in vcom at PREFIX=tmp_path/opt."""
    prefix = tmp_path / "opt"
    make("install-units", "install-rules", destdir=tmp_path / "root", PREFIX=str(prefix))
    fake = prefix / "bin" / "vcom"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    return tmp_path / "root", prefix


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    # cwd=/ because verify also loads units from the working directory.
    return run([tool("systemd-analyze", "systemd"), "verify", str(unit)], cwd="/")


def instance_of(template: Path, instance: str, where: Path) -> Path:
    """A copy named as an instance (verify needs an instance to expand %i/%I)."""
    unit = where / template.name.replace("@.", f"@{instance}.")
    unit.write_text(template.read_text())
    return unit


def test_units_name_the_prefix(staged_units: tuple[Path, Path]) -> None:
    root, prefix = staged_units
    manager = (root / UNIT_DIR / "vcom.service").read_text()
    share = (root / UNIT_DIR / "vcom-share@.service").read_text()
    assert f"\nExecStart={prefix}/bin/vcom run\n" in manager
    assert f"\nExecStart={prefix}/bin/vcom share /dev/%I --foreground $VCOM_SHARE_ARGS\n" in share


def test_manager_unit_allows_thousands_of_ports() -> None:
    """systemd's default soft limit (1024) stops the manager near 480 ports; the unit sets its own."""
    from vcom import fdlimit

    values = re.findall(r"^LimitNOFILE=(\d+)(?::(\d+))?$", (REPO / "systemd" / "vcom.service").read_text(), re.M)
    assert len(values) == 1, values
    hard = int(values[0][1] or values[0][0])
    assert hard >= 2000 * fdlimit.PER_PORT + fdlimit.RESERVE


def test_manager_unit_verifies_cleanly(staged_units: tuple[Path, Path]) -> None:
    root, _ = staged_units
    result = verify(root / UNIT_DIR / "vcom.service")
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_share_unit_verifies_cleanly(staged_units: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = staged_units
    result = verify(instance_of(root / UNIT_DIR / "vcom-share@.service", "ttyUSB0", tmp_path))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_reports_a_broken_unit(staged_units: tuple[Path, Path], tmp_path: Path) -> None:
    """The clean results above mean something: verify speaks up about a bad key, a bad value, a missing binary."""
    root, prefix = staged_units
    text = (root / UNIT_DIR / "vcom.service").read_text()
    broken = tmp_path / "broken.service"
    broken.write_text(text.replace("ProtectHome=yes", "ProtectHome=maybe\nProtectEverything=yes")
                      .replace(f"{prefix}/bin/vcom", f"{prefix}/bin/missing"))
    result = verify(broken)
    assert "protect home value" in result.stderr.lower() and "ProtectEverything" in result.stderr
    assert "missing" in result.stderr and result.returncode != 0


# --- udev rules ----------------------------------------------------------------------------------------------------


# One assignment or match: KEY or KEY{attr}, an operator, a double-quoted value.
_TOKEN = re.compile(r'\s*([A-Z_]+(?:\{[^}]*\})?)\s*(==|!=|\+=|-=|:=|=)\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')


def rule_syntax_errors(text: str) -> list[str]:
    """Lines that are not comma-separated KEY OP "VALUE" tokens (udevadm 252 lets a missing comma pass)."""
    errors = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pos = 0
        while pos < len(line):
            match = _TOKEN.match(line, pos)
            if match is None:
                errors.append(f"{number}: {line}")
                break
            pos = match.end()
            if match.group(4) == "" and pos < len(line):  # a token without a comma after it
                errors.append(f"{number}: {line}")
                break
    return errors


def udev_test(rules: dict[str, str], syspath: Path, tmp_path: Path) -> tuple[dict[str, str], str]:
    """`udevadm test --action=add` with exactly `rules`; returns the event's properties and the log."""
    rules_dir = tmp_path / "rules.d"
    empty = tmp_path / "empty"
    rules_dir.mkdir(exist_ok=True)
    empty.mkdir(exist_ok=True)
    for old in rules_dir.iterdir():
        old.unlink()
    for name, text in rules.items():
        (rules_dir / name).write_text(text)
    # Hide the distribution's rules and give udevadm throwaway /dev and /run
    # (it creates /dev/char/MAJ:MIN links and a /run/udev database entry).
    script = "; ".join([
        "set -e",
        "mount -t tmpfs tmpfs /run",
        "mount -t tmpfs tmpfs /dev",
        f"mount --bind {shlex.quote(str(rules_dir))} /etc/udev/rules.d",
        f"for d in /usr/lib/udev/rules.d /lib/udev/rules.d /usr/local/lib/udev/rules.d; do "
        f"if [ -d $d ]; then mount --bind {shlex.quote(str(empty))} $d; fi; done",
        f"exec {shlex.quote(tool('udevadm', 'udev'))} test --action=add {shlex.quote(str(syspath))}",
    ])
    unshare = [tool("unshare", "util-linux"), "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        unshare.append("--map-root-user")
    result = run([*unshare, "sh", "-c", script])
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    properties = dict(line.split("=", 1) for line in result.stdout.splitlines() if re.match(r"^[A-Z_]+=", line))
    return properties, log


def repo_rules() -> dict[str, str]:
    return {name: (REPO / "udev" / name).read_text() for name in RULES}


def a_tty() -> Path:
    """A tty of this machine with a device number (any will do: the marking rule below picks it)."""
    ttys = sorted(p for p in Path("/sys/class/tty").iterdir() if (p / "dev").exists())
    assert ttys, "no tty in /sys/class/tty"
    return next((p for p in ttys if p.name.startswith("ttyS")), ttys[0])


def mark(tty: Path) -> str:
    """The documented way to mark a device, here by kernel name: there is no USB adapter to match."""
    return f'SUBSYSTEM=="tty", KERNEL=="{tty.name}", ENV{{VCOM_SHARE}}="1"\n'


def test_rules_are_well_formed(tmp_path: Path) -> None:
    for name, text in repo_rules().items():
        assert rule_syntax_errors(text) == [], name
    _, log = udev_test(repo_rules(), a_tty(), tmp_path)
    for name in RULES:
        assert f"Reading rules file: /etc/udev/rules.d/{name}" in log
    complaints = [line for line in log.splitlines() if re.match(r"/etc/udev/rules\.d/\S+:\d+ ", line)]
    assert complaints == []


def test_syntax_check_finds_a_missing_comma() -> None:
    assert rule_syntax_errors('SUBSYSTEM=="tty" ENV{X}="1"\n# comment\nKERNEL=="a", ENV{Y}+="b"\n') == [
        '1: SUBSYSTEM=="tty" ENV{X}="1"']


def test_marked_tty_wants_its_share_service(tmp_path: Path) -> None:
    tty = a_tty()
    properties, log = udev_test({"10-mark.rules": mark(tty), **repo_rules()}, tty, tmp_path)
    assert properties.get("VCOM_SHARE") == "1", log
    assert properties.get("SYSTEMD_WANTS") == f"vcom-share@{tty.name}.service", log
    assert "systemd" in properties.get("TAGS", "").split(":")


def test_unmarked_tty_wants_nothing(tmp_path: Path) -> None:
    properties, log = udev_test(repo_rules(), a_tty(), tmp_path)
    assert "SYSTEMD_WANTS" not in properties, log
    assert "VCOM_SHARE" not in properties


def test_network_interface_wants_the_manager(tmp_path: Path) -> None:
    interfaces = sorted(p for p in Path("/sys/class/net").iterdir() if p.name != "lo")
    if not interfaces:
        pytest.skip("this machine has no network interface but lo")
    properties, log = udev_test(repo_rules(), interfaces[0], tmp_path)
    assert properties.get("SYSTEMD_WANTS") == "vcom.service", log


def test_loopback_wants_nothing(tmp_path: Path) -> None:
    properties, log = udev_test(repo_rules(), Path("/sys/class/net/lo"), tmp_path)
    assert properties.get("SUBSYSTEM") == "net", log
    assert "SYSTEMD_WANTS" not in properties, log


# --- make install-system / uninstall -------------------------------------------------------------------------------


@pytest.mark.timeout(INSTALL_TIMEOUT + 3 * TIMEOUT)  # install, the staged --help, uninstall
def test_install_system_then_uninstall_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    had_build_dir = (REPO / "build").exists()
    make("install-system", destdir=root, timeout=INSTALL_TIMEOUT)
    try:
        link = root / "usr/local/bin/vcom"
        assert os.readlink(link) == "/opt/vcom/bin/vcom"  # where it will be once the tree is in place
        for unit in UNITS:
            assert "ExecStart=/opt/vcom/bin/vcom " in (root / UNIT_DIR / unit).read_text()
        for rules in RULES:
            assert (root / RULES_DIR / rules).read_text() == (REPO / "udev" / rules).read_text()
        staged = run([str(root / "opt/vcom/bin/vcom"), "--help"])
        assert staged.returncode == 0 and "share" in staged.stdout, staged.stderr
        assert (REPO / "build").exists() == had_build_dir  # built from a copy: no build/ left in the tree
    finally:
        make("uninstall", destdir=root)
    assert files_under(root) == []
    assert not (root / "opt/vcom").exists()
