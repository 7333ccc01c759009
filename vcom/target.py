"""Parsing of remote targets: ``host:port``, ``rfc2217://host:port``,
``tcp://host:port``, ``udp://host:port``, with IPv6 literals in brackets
(``[::1]:4001``).

A target is checked completely before anything is created, so that a typo
gives one clear line instead of a port that retries a nonsense address.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass


class Transport(enum.Enum):
    RFC2217 = "rfc2217"
    TCP = "tcp"
    UDP = "udp"


class TargetError(ValueError):
    """A target string that cannot name a remote serial port."""


# RFC 1123 host names: labels of letters, digits and hyphens.
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")


@dataclass(frozen=True, slots=True)
class Target:
    transport: Transport
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.transport.value}://{join_host_port(self.host, self.port)}"


def parse_target(text: str) -> Target:
    """Parse a target string, raising :class:`TargetError` with a one-line reason."""
    original = text
    text = text.strip()
    if not text:
        raise TargetError("empty target: expected host:port, rfc2217://host:port, tcp://host:port or udp://host:port")
    transport = Transport.RFC2217
    if "://" in text:
        scheme, _, text = text.partition("://")
        try:
            transport = Transport(scheme.lower())
        except ValueError:
            known = ", ".join(t.value for t in Transport)
            raise TargetError(f"unknown scheme {scheme!r} in {original!r} (known: {known})") from None
    host, port_text = split_host_port(text, original)
    return Target(transport, _check_host(host, original), _check_port(port_text, original))


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
