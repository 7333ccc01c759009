"""Who may use the control socket: root, the manager's user and members of group ``vcom``.

The group exists only for the manager under test: it runs in a private mount
namespace where a copy of /etc/group with a ``vcom`` group (member: daemon)
is bound over the real one, so nothing on the machine changes and nothing
needs cleaning up.  The callers are forked children of the test with the ids
under test (set with setresuid/setresgid/setgroups); they talk the control
protocol with vcom's own client.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import Vcom, run_as, unused_gid, wait_until

from vcom import control

NOBODY = pwd.getpwnam("nobody")
DAEMON = pwd.getpwnam("daemon")


@pytest.fixture
def manager_with_group() -> Iterator[tuple[Vcom, int]]:
    """A manager that sees a group ``vcom`` (gid returned) with member ``daemon``; its home is world-traversable."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    base = Path(tempfile.mkdtemp(prefix="vcom-group-", dir="/tmp"))
    os.chmod(base, 0o755)
    vcom = Vcom(base / "h")
    os.chmod(vcom.home, 0o755)
    gid = unused_gid()
    groups = base / "group"
    groups.write_text(Path("/etc/group").read_text() + f"vcom:x:{gid}:daemon\n")
    script = f'mount --bind "{groups}" /etc/group && exec "{sys.executable}" -m vcom run'
    with open(base / "manager.log", "wb") as log:
        manager = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                   env=vcom.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        wait_until(lambda: manager.poll() is not None or control.manager_running(vcom.home / "vcom.sock"), 15,
                   "the manager answering")
        assert manager.poll() is None, (base / "manager.log").read_text()
        yield vcom, gid
    finally:
        vcom.close()
        manager.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)


def _list(sock: Path) -> str:
    """What `vcom list` gets from the manager: 'ok' or the one-line refusal."""
    try:
        answer = control.request(sock, "list", timeout=10)
    except control.ControlError as exc:
        return f"refused: {exc}"
    return "ok" if answer.get("ok") and "ports" in answer else f"refused: {answer.get('error')}"


def test_the_socket_belongs_to_group_vcom(manager_with_group: tuple[Vcom, int]):
    vcom, gid = manager_with_group
    sock = os.stat(vcom.home / "vcom.sock")
    assert (sock.st_gid, sock.st_mode & 0o777) == (gid, 0o660)


def test_a_member_listed_in_the_group_is_admitted(manager_with_group: tuple[Vcom, int]):
    vcom, gid = manager_with_group
    # As a login gives it: daemon's own primary group, vcom as a supplementary group.
    assert run_as(DAEMON.pw_uid, DAEMON.pw_gid, [DAEMON.pw_gid, gid], lambda: _list(vcom.home / "vcom.sock")) == "ok"


def test_a_process_whose_group_is_vcom_is_admitted(manager_with_group: tuple[Vcom, int]):
    vcom, gid = manager_with_group
    assert run_as(NOBODY.pw_uid, gid, [], lambda: _list(vcom.home / "vcom.sock")) == "ok"


def test_a_process_with_vcom_as_a_supplementary_group_is_admitted(manager_with_group: tuple[Vcom, int]):
    vcom, gid = manager_with_group
    # E.g. a service with SupplementaryGroups=vcom, or after newgrp: in group vcom, but not listed in /etc/group.
    assert run_as(NOBODY.pw_uid, NOBODY.pw_gid, [gid], lambda: _list(vcom.home / "vcom.sock")) == "ok"


def test_others_are_refused(manager_with_group: tuple[Vcom, int]):
    vcom, _ = manager_with_group
    sock = vcom.home / "vcom.sock"
    # The socket's mode turns them away first...
    answer = run_as(NOBODY.pw_uid, NOBODY.pw_gid, [], lambda: _list(sock))
    assert answer == (f"refused: permission denied on {sock}: only root and group 'vcom' may control vcom "
                      "(one just added to the group must log in again, or run 'newgrp vcom')")
    # ...and the manager too, when the file system would let them in.
    os.chmod(sock, 0o666)
    answer = run_as(NOBODY.pw_uid, NOBODY.pw_gid, [], lambda: _list(sock))
    assert answer == "refused: permission denied: only root and group 'vcom' may control vcom"
    assert _list(sock) == "ok"  # root
