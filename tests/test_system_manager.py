"""Users' commands and programs reach the system manager (vcom.service: root, its sockets in /run/vcom).

A user's own manager would keep its sockets in $XDG_RUNTIME_DIR/vcom.  A user who runs none must still
find the system manager: any user's wrapped program for the ports it holds, and a member of group vcom
(whom the control socket admits) for every command, with ports made for them.  Others are told why they
are turned away.  The manager, root, does for a member only what the member could do (vcom.onbehalf).

The manager runs in a mount namespace of the test's own, where /run and /dev are fresh tmpfs (the
machine's device nodes and devpts bound into the latter) and a copy of /etc/group with a group ``vcom``
is bound over the real one: the machine's /run/vcom, /dev and /etc/group are never touched.  The users'
commands enter that namespace (nsenter) as user nobody, with and without the group (setpriv), with no
VCOM_HOME and no home of their own.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from peers import PYTHON, PtyDevice, has_7e1, run_as, unused_gid, wait_until
from tls_peers import Certs

from vcom import paths

NOBODY = pwd.getpwnam("nobody")


@dataclass
class SystemManager:
    pid: int
    gid: int  # group vcom, as the manager and everyone in its namespace see it
    log: Path

    @property
    def inside(self) -> list[str]:
        return ["nsenter", f"--target={self.pid}", "--mount", "--"]

    def as_root(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A vcom command of root's in the manager's namespace."""
        return subprocess.run([*self.inside, PYTHON, "-m", "vcom", *args], env={**os.environ, "VCOM_HOME": "/run/vcom"},
                              capture_output=True, text=True, timeout=60)

    def as_nobody(self, *command: str, member: bool, **env: str) -> subprocess.CompletedProcess[str]:
        """``command`` run by user nobody, in group vcom or not, in the manager's namespace."""
        groups = f"--groups={self.gid}" if member else "--clear-groups"
        user = ["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", groups]
        return subprocess.run([*self.inside, *user, *command], env={**_user_env(), **env}, cwd="/",
                              capture_output=True, text=True, timeout=60)

    def vcom(self, *args: str, member: bool = True) -> subprocess.CompletedProcess[str]:
        return self.as_nobody(PYTHON, "-m", "vcom", *args, member=member)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _user_env() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in ("VCOM_HOME", "XDG_RUNTIME_DIR")}
    env["HOME"] = "/nonexistent"
    return env


# A /dev of the namespace's own, where ports are made as in the machine's: a tmpfs with the nodes the
# manager and the users' commands need, bound from the machine's /dev, and its devpts (so the test's ptys
# are seen inside).  /dev/ptmx leads into that devpts: a bound ptmx node would look for its devpts beside
# itself on the machine's /dev and fail.  No device node is made (no CAP_MKNOD needed).
_OWN_DEV = ("mkdir /run/hostdev && mount --rbind /dev /run/hostdev && mount -t tmpfs -o mode=755 tmpfs /dev && "
            "for n in null zero full random urandom tty; do touch /dev/$n && mount --bind /run/hostdev/$n /dev/$n; "
            "done && mkdir /dev/pts && mount --bind /run/hostdev/pts /dev/pts && ln -s pts/ptmx /dev/ptmx && "
            "ln -s /proc/self/fd /dev/fd && mkdir -m 1777 /dev/shm")


@pytest.fixture
def system_manager(tmp_path) -> Iterator[SystemManager]:
    for tool in ("unshare", "nsenter", "setpriv"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} (util-linux) is not installed")
    if os.geteuid() != 0:
        pytest.skip("needs root, as the unit runs vcom")
    usable = subprocess.run(["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups",
                             PYTHON, "-c", "import vcom.cli.ports"], env=_user_env(), cwd="/",
                            capture_output=True, text=True, timeout=60)
    if usable.returncode != 0:
        pytest.skip(f"user nobody cannot run vcom from this checkout: {usable.stderr.strip().splitlines()[-1:]}")
    gid = unused_gid()
    groups = tmp_path / "group"
    groups.write_text(Path("/etc/group").read_text() + f"vcom:x:{gid}:\n")
    script = (f'mount -t tmpfs tmpfs /run && mkdir -m 755 /run/vcom && mount --bind "$0" /etc/group && {_OWN_DEV} && '
              'exec "$@"')
    log_path = tmp_path / "manager.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed in finally, after the manager
    manager = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(groups),
                                PYTHON, "-m", "vcom", "run"], env={**os.environ, "VCOM_HOME": "/run/vcom"},
                               stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    system = SystemManager(manager.pid, gid, log_path)
    try:
        wait_until(lambda: manager.poll() is not None or system.as_root("status").returncode == 0, 20,
                   "the manager answering in its namespace")
        assert manager.poll() is None, system.log_text()
        yield system
    finally:
        if manager.poll() is None:
            system.as_root("shutdown")
            try:
                manager.wait(timeout=15)
            except subprocess.TimeoutExpired:
                manager.kill()
                manager.wait(timeout=10)
        log.close()


def test_a_users_vcom_wrap_reaches_the_ports_of_the_system_manager(system_manager: SystemManager, refused_port):
    # Any user, member or not: the interposer socket admits every program, for the ports it holds.
    added = system_manager.as_root("add", "/run/vcom/ttyV0", f"127.0.0.1:{refused_port}", "--mode", "0666")
    assert added.returncode == 0, added.stderr
    device = subprocess.run([*system_manager.inside, "readlink", "/run/vcom/ttyV0"], capture_output=True, text=True,
                            check=True, timeout=30).stdout.strip()
    stty = f"stty -F {device} cs7 parenb && stty -F {device} -a"
    wrapped = system_manager.vcom("wrap", "sh", "-c", stty, member=False)
    assert wrapped.returncode == 0, f"{wrapped.stderr}\n{system_manager.log_text()}"
    assert has_7e1(wrapped.stdout), wrapped.stdout


def test_a_member_of_group_vcom_uses_the_system_manager(system_manager: SystemManager, refused_port):
    # Before, a member's commands asked a manager of their own that did not run: `vcom status` said none
    # runs, and `vcom add` started one of the user's own.
    assert system_manager.as_root("add", "/dev/ttyV0", f"127.0.0.1:{refused_port}").returncode == 0
    status = system_manager.vcom("status")
    assert status.returncode == 0, status.stderr
    assert "/dev/ttyV0" in status.stdout, status.stdout

    added = system_manager.vcom("add", "/dev/ttyV1", f"127.0.0.1:{refused_port}")
    assert added.returncode == 0, f"{added.stderr}\n{system_manager.log_text()}"
    # The port is the member's (and dialout's, as root's ports are), not root's alone.
    owned = subprocess.run([*system_manager.inside, "stat", "-L", "-c", "%u %g %a", "/dev/ttyV1"],
                           capture_output=True, text=True, check=True, timeout=30).stdout.split()
    assert owned == [str(NOBODY.pw_uid), str(grp.getgrnam("dialout").gr_gid), "660"]
    opened = system_manager.as_nobody("stty", "-F", "/dev/ttyV1", "19200", member=False)
    assert opened.returncode == 0, opened.stderr

    # The system manager's config file is root's: the member's list comes from the manager.
    listed = system_manager.vcom("list", "--paths")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["/dev/ttyV0", "/dev/ttyV1"]
    completed = system_manager.as_nobody(PYTHON, "-m", "vcom", member=True, _VCOM_COMPLETE="complete_bash",
                                         COMP_WORDS="vcom remove /dev/tty", COMP_CWORD="2")
    assert completed.stdout.split() == ["/dev/ttyV0", "/dev/ttyV1"], completed.stderr
    removed = system_manager.vcom("remove", "/dev/ttyV1")
    assert removed.returncode == 0, removed.stderr
    assert system_manager.as_root("list", "--paths").stdout.split() == ["/dev/ttyV0"]
    assert not os.path.lexists(f"/proc/{system_manager.pid}/root/dev/ttyV1")


def test_the_system_manager_does_for_a_member_only_what_the_member_may_do(system_manager: SystemManager,
                                                                          refused_port, open_dir: Path):
    # The manager runs as root: without this, a member could make a port where root reads files (its
    # login shell would read commands from the member's own server), share another user's terminal, or
    # have root's TLS key sign handshakes to the member's server.
    refused = system_manager.vcom("add", "/run/vcom/ttyV2", f"127.0.0.1:{refused_port}")
    assert (refused.returncode, refused.stderr.strip()) == (
        1, "vcom: cannot create /run/vcom/ttyV2: the manager makes a port for a member of group vcom only in /dev "
           "(such as /dev/ttyV0); a manager of your own makes it anywhere")
    inside = Path(f"/proc/{system_manager.pid}/root")
    (inside / "dev/cdrom").symlink_to("sr0")  # a system name whose device is away
    (inside / "dev/ttyV4").symlink_to("/dev/pts/999")  # left by a port whose manager died
    refused = system_manager.vcom("add", "/dev/cdrom", f"127.0.0.1:{refused_port}")
    assert (refused.returncode, refused.stderr.strip()) == (
        1, "vcom: cannot create /dev/cdrom: it is a link to sr0, and the manager replaces a link for a member of "
           "group vcom only when a port left it behind (a link into /dev/pts)")
    added = system_manager.vcom("add", "/dev/ttyV4", f"127.0.0.1:{refused_port}")
    assert added.returncode == 0, added.stderr

    certs = Certs(open_dir / "pki")
    certs.ca_file.chmod(0o600)  # root's alone, as a key in /etc/ssl/private is
    target = f"tcp+tls://127.0.0.1:{refused_port}"
    refused = system_manager.vcom("add", "/dev/ttyV3", target, "--tls-ca", str(certs.ca_file))
    assert (refused.returncode, refused.stderr.strip()) == (
        1, f"vcom: --tls-ca {certs.ca_file}: you may not read it, and the manager uses a TLS file for a member of "
           "group vcom only if the member may read it")
    certs.ca_file.chmod(0o644)
    # One the member may read but could swap for another before `vcom reload` reads it again.
    swappable = open_dir / "own"
    swappable.mkdir()
    os.chown(swappable, NOBODY.pw_uid, NOBODY.pw_gid)
    shutil.copy(certs.ca_file, swappable / "ca.pem")
    refused = system_manager.vcom("add", "/dev/ttyV3", target, "--tls-ca", str(swappable / "ca.pem"))
    assert (refused.returncode, refused.stderr.strip()) == (
        1, f"vcom: --tls-ca {swappable / 'ca.pem'}: you may change {swappable}, and the manager uses a TLS file for "
           "a member of group vcom only where the member cannot put another file in its place")
    added = system_manager.vcom("add", "/dev/ttyV3", target, "--tls-ca", str(certs.ca_file))
    assert added.returncode == 0, added.stderr

    device, other = PtyDevice(), PtyDevice()  # root's, as another user's terminal is that user's
    (open_dir / "link").symlink_to(device.path)
    (inside / "dev/shm/link").symlink_to(device.path)
    os.lchown(inside / "dev/shm/link", NOBODY.pw_uid, NOBODY.pw_gid)
    cannot = "vcom: cannot share {}: "
    try:
        for path, reason in [
            (str(open_dir / "link"), "the manager shares for a member of group vcom only a device under /dev"),
            ("/dev/shm/link", "you may change /dev/shm, and the manager shares for a member of group vcom only by a "
                              "path the member cannot change"),
            (device.path, "you may not open it for reading and writing, and the manager shares for a member of "
                          "group vcom only what the member may use"),
        ]:
            refused = system_manager.vcom("share", path, "--listen", "127.0.0.1:0")
            assert (refused.returncode, refused.stderr.strip()) == (1, cannot.format(path) + reason)
        os.chown(device.path, NOBODY.pw_uid, -1)  # the member's own pty: its number goes to the next login
        refused = system_manager.vcom("share", device.path, "--listen", "127.0.0.1:0")
        assert (refused.returncode, refused.stderr.strip()) == (1, cannot.format(device.path) + (
            "it is the terminal of a login session (a pty or a console), which the manager does not share for a "
            "member of group vcom"))
        assert system_manager.as_root("share", device.path, "--listen", "127.0.0.1:0").returncode == 0  # root may
        shared = system_manager.vcom("share", "sim:echo", "--listen", "127.0.0.1:0")
        assert shared.returncode == 0, shared.stderr
        # Acting on what root made: only on what the member may open (a device, a port's pty).
        assert system_manager.as_root("share", other.path, "--listen", "127.0.0.1:0").returncode == 0
        assert system_manager.as_root("add", "/dev/ttyV5", f"127.0.0.1:{refused_port}", "--group",
                                      "root").returncode == 0
        for args, name in ((("unshare", other.path), other.path), (("monitor", "/dev/ttyV5"), "/dev/ttyV5"),
                           (("remove", "/dev/ttyV5"), "/dev/ttyV5")):
            refused = system_manager.vcom(*args)
            assert (refused.returncode, refused.stderr.strip()) == (
                1, f"vcom: cannot {args[0]} {name}: you may not open it for reading and writing, and the manager does "
                   "that for a member of group vcom only if the member may")
        assert system_manager.vcom("unshare", device.path).returncode == 0  # a device the member may open
        assert system_manager.as_root("share", device.path, "--listen", "127.0.0.1:0").returncode == 0
    finally:
        device.close()
        other.close()
    stopped = system_manager.vcom("shutdown")
    assert (stopped.returncode, stopped.stderr.strip()) == (
        1, "vcom: only root and the manager's own user may stop this manager (as root: systemctl stop vcom, or "
           "vcom shutdown)")
    status = json.loads(system_manager.as_root("status", "--json").stdout)
    assert [p["device"] for p in status["ports"]] == ["/dev/ttyV4", "/dev/ttyV3", "/dev/ttyV5"]  # nothing refused
    assert sorted(s["device"] for s in status["shares"]) == sorted([device.path, other.path, "sim:echo"])


def test_others_learn_why_the_system_manager_turns_them_away(system_manager: SystemManager):
    status = system_manager.vcom("status", member=False)
    assert status.returncode == 3, status.stdout
    assert ("vcom: the system manager runs, but its control socket /run/vcom/vcom.sock admits only root and "
            "members of group 'vcom' (one just added to it must log in again, or run 'newgrp vcom')"
            ) in status.stderr.splitlines(), status.stderr
    added = system_manager.vcom("add", "/dev/ttyV9", "127.0.0.1:1", member=False)
    assert (added.returncode, added.stderr.strip()) == (
        1, "vcom: cannot create /dev/ttyV9: directory /dev is not writable; the system manager, which may write "
           "there, takes requests from root and group 'vcom' only (sudo vcom add ..., or join the group)")
    added = system_manager.vcom("add", "/run/vcom/ttyV9", "127.0.0.1:1", member=False)  # not for a member either
    assert (added.returncode, added.stderr.strip()) == (
        1, "vcom: cannot create /run/vcom/ttyV9: directory /run/vcom is not writable")



@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory that user nobody may enter (pytest's tmp_path lies in one that only root may)."""
    base = Path(tempfile.mkdtemp(prefix="vcom-system-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_manager_a_command_addresses(open_dir: Path) -> None:
    # What `for_commands` chooses, with real sockets, as user nobody: in group vcom (here GID) or not.
    if os.geteuid() != 0:
        pytest.skip("needs root, to be user nobody in the test's own groups")
    gid = unused_gid()
    tmp_path = open_dir
    runtime, system_dir = tmp_path / "run", tmp_path / "system"
    (runtime / "vcom").mkdir(parents=True)
    os.chown(runtime, NOBODY.pw_uid, NOBODY.pw_gid)
    system_dir.mkdir()
    system = paths.Paths(*(system_dir / name for name in ("vcom.toml", "vcom.sock", "vcom.pid", "vcom.log",
                                                          "interposer.sock", "lib")))
    own_socket = runtime / "vcom" / "vcom.sock"

    def chosen(member: bool, home: str | None = None) -> str:
        def choose() -> str:
            os.environ.pop("VCOM_HOME", None)
            if home:
                os.environ["VCOM_HOME"] = home
            os.environ.update(XDG_RUNTIME_DIR=str(runtime), HOME=str(tmp_path))
            where = paths.for_commands(system)
            return "system" if where == system else "own" if where.socket == own_socket else str(where.socket)
        return run_as(NOBODY.pw_uid, NOBODY.pw_gid, [gid] if member else [], choose)

    def listening(path: Path, mode: int, group: int = 0) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        sock.listen()
        os.chown(path, 0, group)
        os.chmod(path, mode)
        return sock

    assert chosen(member=True) == "own"  # no manager anywhere: one of one's own is started there
    with listening(system.socket, 0o660, gid):  # as the system manager's control socket is
        assert chosen(member=True) == "system"
        assert chosen(member=False) == "own"  # the socket turns others away: they keep their own
        assert run_as(NOBODY.pw_uid, NOBODY.pw_gid, [], lambda: paths.probe(system.socket)) == "refused"
        with listening(own_socket, 0o666):
            assert chosen(member=True) == "own"  # one's own manager answers first
        assert own_socket.exists()  # left by a manager that died: not a manager
        assert chosen(member=True) == "system"
        assert chosen(member=True, home=str(tmp_path / "h")) == str(tmp_path / "h" / "vcom.sock")  # VCOM_HOME: that one
    assert run_as(NOBODY.pw_uid, NOBODY.pw_gid, [gid], lambda: paths.probe(system.socket)) == "absent"


def test_the_entries_that_decide_where_a_path_leads(tmp_path: Path) -> None:
    from vcom.onbehalf import _entries_on

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "key.pem").write_text("k")
    (tmp_path / "a" / "b" / "hop").symlink_to("../../c")  # relative, through ".."
    (tmp_path / "a" / "link").symlink_to(tmp_path / "a" / "b" / "hop" / "key.pem")  # absolute, to another link
    parts = tmp_path.parts
    ancestors = [(str(Path(*parts[:i])), parts[i]) for i in range(1, len(parts))]
    found = _entries_on(str(tmp_path / "a" / "link"))
    assert found == [*ancestors, (str(tmp_path), "a"), (str(tmp_path / "a"), "link"), (str(tmp_path / "a"), "b"),
                     (str(tmp_path / "a" / "b"), "hop"), (str(tmp_path), "c"), (str(tmp_path / "c"), "key.pem")]
    assert _entries_on(str(tmp_path / "c" / "key.pem")) == [*ancestors, (str(tmp_path), "c"),
                                                             (str(tmp_path / "c"), "key.pem")]
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert _entries_on(str(tmp_path / "loop")) == [*ancestors, (str(tmp_path), "loop")]  # bounded: a loop ends


def test_a_manager_that_cannot_become_the_caller_refuses(open_dir: Path) -> None:
    # A manager of a user's own (not root) admits members of group vcom too, but may not take their ids.
    import asyncio

    from vcom.onbehalf import Caller, refusal

    daemon = pwd.getpwnam("daemon")
    member = Caller(os.getpid(), daemon.pw_uid, daemon.pw_gid)
    ca = open_dir / "ca.pem"
    ca.write_text("public")

    def judged() -> str:
        return repr(asyncio.run(refusal(member, tls_files=[("--tls-ca", str(ca))])))

    assert run_as(NOBODY.pw_uid, NOBODY.pw_gid, [], judged) == repr(
        f"the manager could not check as you whether you may use {ca} ([Errno 1] Operation not permitted); refused")
    assert asyncio.run(refusal(member, tls_files=[("--tls-ca", str(ca))])) is None  # root may: daemon reads it
    assert asyncio.run(refusal(Caller(os.getpid(), 0, 0), ports=["/etc/profile.d/x"])) is None  # root's own request
