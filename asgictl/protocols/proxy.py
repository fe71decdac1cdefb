"""Which peers are trusted with proxy headers, and what those headers say.

``--forwarded-allow-ips`` lists addresses, CIDR networks and literals (for example the
path of a Unix socket a proxy connects through); ``*`` trusts every peer. Only for a
trusted peer do ``X-Forwarded-For`` and ``X-Forwarded-Proto`` replace the client address
and scheme of the ASGI scope.
"""

from __future__ import annotations

import ipaddress
from typing import Any

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedHosts:
    """A parsed ``--forwarded-allow-ips`` value."""

    __slots__ = ("always", "literals", "networks")

    def __init__(self, spec: str) -> None:
        self.always = False
        self.networks: list[_Network] = []
        self.literals: set[str] = set()
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            if item == "*":
                self.always = True
                continue
            try:
                self.networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self.literals.add(item)

    def __contains__(self, host: str | None) -> bool:
        if self.always:
            return True
        if not host:
            return False
        if host in self.literals:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def client_from_forwarded_for(self, value: str) -> str | None:
        """The address of the nearest untrusted hop in an ``X-Forwarded-For`` list.

        Hops are read from the right (nearest proxy first); trusted proxies are skipped.
        When every hop is trusted, the leftmost one is the client.
        """
        hops = [hop.strip() for hop in value.split(",") if hop.strip()]
        if not hops:
            return None
        if self.always:
            return hops[0]
        for hop in reversed(hops):
            if hop not in self:
                return hop
        return hops[0]

    def forwarded(self, headers: list[tuple[bytes, bytes]], client: Any, scheme: str) -> tuple[Any, str]:
        """The (client, scheme) a trusted peer's ``X-Forwarded-For``/``-Proto`` say, from
        request ``headers``; ``client`` and ``scheme`` are what the connection says."""
        for name, value in headers:
            if name == b"x-forwarded-proto":
                proto = parse_forwarded_proto(value)
                if proto is not None:
                    scheme = proto
            elif name == b"x-forwarded-for":
                host = self.client_from_forwarded_for(value.decode("latin-1"))
                if host:
                    client = (host, 0)
        if scheme in ("ws", "wss"):
            scheme = "https" if scheme == "wss" else "http"
        return client, scheme


def parse_forwarded_proto(value: bytes) -> str | None:
    """The scheme from ``X-Forwarded-Proto`` (the leftmost value of a list), or None."""
    proto = value.decode("latin-1").split(",")[0].strip().lower()
    return proto if proto in ("http", "https", "ws", "wss") else None
