"""Who may connect to a share: ``--allow CIDR`` (repeatable), checked on the peer's address before
anything else happens (before a TLS handshake costs the share CPU, before the device hears a byte).

An IPv4 client of a share listening on ``[::]`` arrives as an IPv4-mapped IPv6 address
(``::ffff:192.0.2.7``); it is matched as the IPv4 address it is, so ``--allow 192.0.2.0/24`` works on
either kind of listener.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AccessError(ValueError):
    """An --allow entry that is not an address or network."""


def parse_network(text: object) -> Network:
    """``192.0.2.0/24``, ``2001:db8::/32`` or a single address (``192.0.2.7``: that address alone).
    Host bits set under the mask (``192.0.2.7/24``) are refused rather than silently widened."""
    if not isinstance(text, str) or not text.strip():
        raise AccessError("is not an address or network such as 192.0.2.0/24")
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError:
        pass
    try:
        wide = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise AccessError("is not an address or network such as 192.0.2.0/24") from None
    raise AccessError(f"has host bits set under its mask: did you mean {wide}?")


class AllowList:
    """The networks of ``--allow``; empty: everyone may connect."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.networks = [parse_network(entry) for entry in entries]

    def __bool__(self) -> bool:
        return bool(self.networks)

    def allows(self, peer: Any) -> bool:
        """``peer``: a socket address tuple (host first) or an address string."""
        if not self.networks:
            return True
        host = peer[0] if isinstance(peer, tuple) else peer
        try:
            address = ipaddress.ip_address(str(host).split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
        except ValueError:
            return False  # not an IP peer (a Unix socket?): nothing here can allow it
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def to_json(self) -> list[str]:
        return [str(network) for network in self.networks]


def is_loopback(host: str) -> bool:
    """Whether a listen address reaches only this machine (names other than localhost are assumed not to)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
