"""Parsing of remote targets: ``host:port``, ``rfc2217://host:port``,
``tcp://host:port``, ``udp://host:port``, and over TLS ``rfc2217+tls://host:port`` and
``tcp+tls://host:port``, with IPv6 literals in brackets (``[::1]:4001``).

A target is checked completely before anything is created, so that a typo
gives one clear line instead of a port that retries a nonsense address.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tls import ClientTls


class Transport(enum.Enum):
    RFC2217 = "rfc2217"
    TCP = "tcp"
    UDP = "udp"


class TargetError(ValueError):
    """A target string that cannot name a remote serial port."""


# RFC 1123 host names: labels of letters, digits and hyphens.
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")


_TLS_SUFFIX = "+tls"
_SCHEMES = "host:port, rfc2217://, tcp://, udp://, rfc2217+tls:// or tcp+tls://"


@dataclass(frozen=True, slots=True)
class Target:
    transport: Transport
    host: str
    port: int
    tls: bool = False
    # How to verify and what to present (a port's --tls-* options); not part of what the target *is*, so
    # two ports that reach the same server over TLS compare equal whatever files they name.
    tls_options: ClientTls | None = field(default=None, compare=False)

    def __str__(self) -> str:
        scheme = self.transport.value + (_TLS_SUFFIX if self.tls else "")
        return f"{scheme}://{join_host_port(self.host, self.port)}"


def parse_target(text: str) -> Target:
    """Parse a target string, raising :class:`TargetError` with a one-line reason."""
    original = text
    text = text.strip()
    if not text:
        raise TargetError(f"empty target: expected {_SCHEMES.replace('://', '://host:port')}")
    transport = Transport.RFC2217
    tls = False
    if "://" in text:
        scheme, _, text = text.partition("://")
        name = scheme.lower()
        tls = name.endswith(_TLS_SUFFIX)
        try:
            transport = Transport(name.removesuffix(_TLS_SUFFIX))
        except ValueError:
            raise TargetError(f"unknown scheme {scheme!r} in {original!r} (known: {_SCHEMES})") from None
        if tls and transport is Transport.UDP:
            raise TargetError(f"UDP has no TLS in vcom (DTLS is not supported): {original!r}; "
                              "use tcp+tls:// or rfc2217+tls://")
    host, port_text = split_host_port(text, original)
    return Target(transport, _check_host(host, original), _check_port(port_text, original), tls)


def split_host_port(text: str, original: str | None = None) -> tuple[str, str]:
    """``host:port`` or ``[v6addr]:port`` into host and port text (either may be empty); the one parser
    of addresses for targets, listen addresses and the metrics endpoint.  ``original`` names the whole
    argument in messages."""
    original = text if original is None else original
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise TargetError(f"unclosed '[' in {original!r}")
        if not rest.startswith(":"):
            raise TargetError(f"missing port after IPv6 address in {original!r} (expected [addr]:port)")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise TargetError(f"{host!r} is not an IPv6 address in {original!r}") from None
        return host, rest[1:]
    if text.count(":") > 1:
        raise TargetError(f"IPv6 addresses need brackets: write [addr]:port, not {original!r}")
    host, sep, port = text.rpartition(":")
    if not sep:
        raise TargetError(f"missing port in {original!r} (expected host:port)")
    return host, port


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_host(host: str, original: str) -> str:
    if not host:
        raise TargetError(f"missing host in {original!r} (expected host:port)")
    if ":" in host:
        return host  # validated IPv6 literal
    if _HOSTNAME.match(host) is None:
        raise TargetError(f"{host!r} is not a valid host name or address in {original!r}")
    return host


def _check_port(port_text: str, original: str) -> int:
    if not port_text.isdigit():
        raise TargetError(f"port {port_text!r} is not a number in {original!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise TargetError(f"port {port} is out of range 1-65535 in {original!r}")
    return port
