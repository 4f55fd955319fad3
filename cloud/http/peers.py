"""The client's address, as the login throttle and the login audit see it.

Without ``trusted_proxies`` it is the TCP peer and ``X-Forwarded-For`` is ignored, since any
client can send it. Behind a reverse proxy every client's peer is the proxy, so one client's
failures would lock every user out; list the proxy's addresses in ``trusted_proxies`` and the
address is taken from the right of ``X-Forwarded-For`` (which each proxy appends to): the first
hop, reading from the right, that is not a trusted proxy. What the client itself wrote further
left is never reached. A hop that is not an address ends the walk at the peer.
"""

import ipaddress
from collections.abc import Sequence
from functools import lru_cache

from aiohttp import web

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Sequence[str]) -> tuple[Network, ...]:
    """``ValueError`` for anything that is not an address or a network."""
    return _networks(tuple(cidrs))


@lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs)


def _address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(request: web.Request, trusted_proxies: Sequence[str]) -> str:
    peer = request.remote or "unknown"
    networks = parse_networks(trusted_proxies)

    def trusted(address: Address | None) -> bool:
        return address is not None and any(address in network for network in networks)

    if not networks or not trusted(_address(peer)):
        return peer
    hops = [
        hop for header in request.headers.getall("X-Forwarded-For", []) for hop in header.split(",")
    ]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            return peer
        if not trusted(address):
            return str(address)
    return peer
