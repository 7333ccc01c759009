"""TLS peers for the tests: certificates made on the spot, ser2net's TLS accepter, and the OpenSSL and
socat command-line clients.

Certificates come from ``trustme`` (a CA per test run; keys written ``0600``, as a real deployment
keeps them).  Nothing here uses vcom's own TLS code, so the peers cannot share its mistakes.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from peers import PeerProcess, Vcom, free_port, wait_until


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


class Certs:
    """A CA and the certificates a test asks for, as files in ``directory``."""

    def __init__(self, directory: Path, name: str = "ca") -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA(organization_name=f"vcom test {name}")
        self.ca_file = self.dir / f"{name}.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self._name = name

    def issue(self, label: str, *identities: str, common_name: str | None = None,
              not_before: datetime.datetime | None = None, not_after: datetime.datetime | None = None) -> Pair:
        issued = self.ca.issue_cert(*(identities or ("127.0.0.1", "localhost")), common_name=common_name,
                                    not_before=not_before, not_after=not_after)
        cert = self.dir / f"{self._name}-{label}.crt"
        key = self.dir / f"{self._name}-{label}.key"
        cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        key.write_bytes(issued.private_key_pem.bytes())
        key.chmod(0o600)
        return Pair(cert, key)

    def server(self, label: str = "server", **kwargs: object) -> Pair:
        return self.issue(label, "127.0.0.1", "localhost", **kwargs)  # type: ignore[arg-type]

    def client(self, label: str = "client", common_name: str = "vcom-client") -> Pair:
        return self.issue(label, common_name, common_name=common_name)


def days(n: float) -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=n)


class Ser2netTls(PeerProcess):
    """ser2net 4 with TLS accepters on ``device``: RFC 2217 over TLS (``.port``), the same requiring a client
    certificate (``.auth_port``), and raw TCP over TLS (``.raw_port``).

    ser2net's client authentication looks in ``<authdir>/<certificate CN>/allowed_certs/`` (a directory
    hashed as ``openssl rehash`` does) for what may have signed the client's certificate; the CA goes
    there under the client's name.
    """

    name = "ser2net-tls"

    def __init__(self, workdir: Path, device: str, server: Pair, client_ca: Path, client_name: str) -> None:
        super().__init__(workdir)
        self.device = device
        self.server_pair = server
        self.authdir = workdir / "auth"
        allowed = self.authdir / client_name / "allowed_certs"
        allowed.mkdir(parents=True, exist_ok=True)
        shutil.copy(client_ca, allowed / "ca.pem")
        subprocess.run(["openssl", "rehash", str(allowed)], check=True, capture_output=True, timeout=10)
        self.port, self.auth_port, self.raw_port = free_port(), free_port(), free_port()
        self.config_path = workdir / "ser2net.yaml"
        self.config_path.write_text(self._config())

    def _config(self) -> str:
        ssl = f"ssl(key={self.server_pair.key},cert={self.server_pair.cert}"
        connections = [
            ("tls", f"telnet(rfc2217),{ssl}),tcp,127.0.0.1,{self.port}", ""),
            ("tlsauth", f"telnet(rfc2217),{ssl},clientauth),tcp,127.0.0.1,{self.auth_port}",
             f"      authdir: {self.authdir}\n"),
            ("tlsraw", f"{ssl}),tcp,127.0.0.1,{self.raw_port}", ""),
        ]
        parts = ["%YAML 1.1", "---"]
        for name, accepter, extra in connections:
            parts += [f"connection: &{name}", f"    accepter: {accepter}", "    options:", "      kickolduser: true"]
            parts += [extra.rstrip("\n")] if extra else []
            # "local": CLOCAL, a pty has no modem lines.
            parts += [f"    connector: serialdev,{self.device},115200n81,local", ""]
        return "\n".join(parts)

    def command(self) -> list[str]:
        return ["ser2net", "-n", "-d", "-u", "-P", str(self.workdir / "ser2net.pid"), "-c", str(self.config_path)]

    def ports(self) -> list[int]:
        return [self.port, self.auth_port, self.raw_port]

    def start(self, timeout: float = 10.0) -> None:
        with open(self.log_path, "ab") as log:
            # A session of its own, so that a stop by process group reaches it.
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        wait_until(lambda: self._alive() and all(map(listening, self.ports())), timeout, "ser2net listening")

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"ser2net exited with {self.proc.returncode}:\n{self.log_tail()}")
        return True


def listening(port: int) -> bool:
    """Whether a socket listens on TCP ``port``, from the kernel's tables: a probe connection would be one
    more (failed) TLS client for the server under test."""
    wanted = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[1].endswith(wanted) and fields[3] == "0A":  # TCP_LISTEN
                    return True
    return False


def query(vcom: Vcom, device: str | os.PathLike[str]) -> dict[str, Any]:
    """What `vcom status DEVICE --json` shows, asked on the control socket: cheap enough to poll."""
    return vcom.query(device)


def wait_query(vcom: Vcom, device: str | os.PathLike[str], predicate: Any, what: str,
               timeout: float = 15.0) -> dict[str, Any]:
    """Poll :func:`query` until ``predicate(status)`` holds; that status."""
    seen: list[dict[str, Any]] = []

    def check() -> dict[str, Any] | None:
        seen[:] = [query(vcom, device)]
        return seen[0] if predicate(seen[0]) else None

    try:
        return wait_until(check, timeout, what, interval=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last status: {seen[-1] if seen else None}") from None


def need(*programs: str) -> None:
    for program in programs:
        if shutil.which(program) is None:
            pytest.skip(f"{program} is not installed")


class OpenSslClient(PeerProcess):
    """``openssl s_client`` connected to 127.0.0.1:``port``: what it is given on stdin goes over TLS, what
    comes back is appended to its log (with -quiet: only the data, after the verification lines on stderr)."""

    name = "s_client"

    def __init__(self, workdir: Path, port: int, ca: Path, pair: Pair | None = None) -> None:
        self.name = f"s_client-{port}-{time.monotonic_ns()}"
        super().__init__(workdir)
        self.port = port
        self.ca = ca
        self.pair = pair
        self.out = workdir / f"{self.name}.out"

    def command(self) -> list[str]:
        command = ["openssl", "s_client", "-connect", f"127.0.0.1:{self.port}", "-CAfile", str(self.ca),
                   "-verify_return_error", "-verify_ip", "127.0.0.1", "-quiet"]
        if self.pair is not None:
            command += ["-cert", str(self.pair.cert), "-key", str(self.pair.key)]
        return command

    def start(self, timeout: float = 10.0) -> None:
        self.out.write_bytes(b"")
        with open(self.out, "ab") as out, open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.PIPE, stdout=out, stderr=log,
                                         start_new_session=True)

    def send(self, data: bytes, *, may_be_refused: bool = False) -> None:
        """Hand ``data`` to s_client.  ``may_be_refused``: a client the server is expected to refuse may have
        exited already (its handshake failed), and then there is nobody to take it."""
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except BrokenPipeError:
            if not may_be_refused:
                raise

    def received(self) -> bytes:
        return self.out.read_bytes()

    def wait_for(self, marker: bytes, timeout: float = 10.0) -> bytes:
        return wait_until(lambda: marker in self.received() and self.received(), timeout,
                          f"{marker!r} from s_client (log: {self.log_tail()})")

    def stop(self) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        super().stop()


def run_ok(*command: str, timeout: float = 10.0, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(command), input=stdin, capture_output=True, timeout=timeout, check=False,
                          env={**os.environ, "LC_ALL": "C"})
