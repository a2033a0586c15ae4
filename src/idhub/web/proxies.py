"""Which address a request comes from, when reverse proxies stand in front of idhub.

A forwarding header is believed only when the connection comes from a trusted proxy
(`[server] trusted_proxies`), and then only as far as trusted proxies wrote it: reading it from
the right, each address that is itself a trusted proxy is skipped and the first one that is not
is the client. Everything to the left of that was written by the client and proves nothing.
This is the one place that decides; uvicorn's own proxy-header handling is switched off.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

HEADERS = {"x-forwarded-for": b"x-forwarded-for", "forwarded": b"forwarded"}
# A proxy chain longer than this is not believed beyond its last entries (header abuse).
MAX_HOPS = 20


@functools.lru_cache(maxsize=4096)
def parse_address(value: str) -> Address | None:
    """An address from a header entry: `203.0.113.7`, `203.0.113.7:4711`, `2001:db8::1`,
    `[2001:db8::1]:4711`, or None for anything else (`unknown`, obfuscated names, garbage).

    Remembered (addresses are immutable): every request parses its peer's address, and the
    `ipaddress` parse was the costliest part of the request context."""
    text = value.strip().strip('"').strip()
    if text.startswith("["):
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=4096)
def address_text(value: str) -> str:
    """The canonical text of a peer address (`::ffff:192.0.2.1` -> `192.0.2.1`), or the value
    itself when it is no address. Remembered: formatting an address was most of what the
    client address still cost when no proxy is trusted."""
    address = parse_address(value)
    return str(address) if address is not None else value


def forwarded_for(value: str) -> list[str]:
    """The `for=` values of an RFC 7239 `Forwarded` header, in order (empty for elements
    without one: they count as an unknown hop)."""
    hops = []
    for element in value.split(","):
        found = ""
        for pair in element.split(";"):
            name, _, item = pair.partition("=")
            if name.strip().lower() == "for":
                found = item
        hops.append(found)
    return hops


class TrustedProxies:
    def __init__(self, networks: Iterable[str], *, header: str = "x-forwarded-for") -> None:
        self._networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(n.strip(), strict=False) for n in networks
        )
        if header not in HEADERS:
            raise ValueError(f"unknown forwarding header {header!r}")
        self._header = header

    def check_trusted(self, address: Address | None) -> bool:
        return address is not None and any(address in n for n in self._networks)

    def client_address(
        self, peer: str | None, headers: Sequence[tuple[bytes, bytes]]
    ) -> str | None:
        """The client's address for a connection from `peer` carrying `headers` (ASGI pairs)."""
        if not self._networks:
            return address_text(peer) if peer else peer
        peer_address = parse_address(peer) if peer else None
        if not self.check_trusted(peer_address):
            return str(peer_address) if peer_address is not None else peer
        wanted = HEADERS[self._header]
        lines = [v.decode("latin-1") for k, v in headers if k == wanted]
        if not lines:
            return str(peer_address)
        joined = ",".join(lines)
        hops = forwarded_for(joined) if self._header == "forwarded" else joined.split(",")
        current = peer_address
        for hop in reversed(hops[-MAX_HOPS:]):
            address = parse_address(hop)
            if address is None:
                # A trusted proxy wrote something that is no address: believe nothing further.
                break
            current = address
            if not self.check_trusted(address):
                break
        return str(current)
