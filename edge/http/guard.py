"""The kiosk API's order capability and per-client limits.

Creating an order returns a secret ``order_token`` (256 random bits; the store keeps only its
SHA-256). Cancelling the order, or replacing it with a new cash order on the same machine, needs
that token in ``X-Order-Token``. A client is its TCP peer address (``X-Forwarded-For`` is not
trusted: the gateway serves the site LAN directly); an IPv6 client counts as its /64, which one
host can fill with addresses. Per client the store bounds open orders and their reserved units
(``edge.store.ledger``), and ``CreationRate`` bounds order creations per minute here."""

import collections
import hashlib
import ipaddress
import math
import re
import secrets
import time

from aiohttp import web

from edge.errors import ClientLimitExceeded

ORDER_TOKEN_HEADER = "X-Order-Token"
ORDER_TOKEN_PATTERN = r"^[A-Za-z0-9_-]{43}$"  # token_urlsafe(32): 256 bits
_ORDER_TOKEN = re.compile(ORDER_TOKEN_PATTERN)
RATE_WINDOW_S = 60.0
# Bounds the limiter's memory when many addresses call once each; a LAN has far fewer hosts.
MAX_TRACKED_CLIENTS = 10_000


def new_order_token() -> tuple[str, str]:
    """A fresh token and the hash the store keeps."""
    token = secrets.token_urlsafe(32)
    return token, hash_order_token(token)


def hash_order_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def presented_token_hash(request: web.Request) -> str | None:
    """The hash of the request's ``X-Order-Token``, or None without one. A malformed token gets
    a hash no order has, so it is refused like a wrong one."""
    token = request.headers.get(ORDER_TOKEN_HEADER)
    if token is None or token == "":
        return None
    if not _ORDER_TOKEN.match(token):
        return "malformed"
    return hash_order_token(token)


def client_key(request: web.Request) -> str:
    # request.remote is the TCP peer: aiohttp reads forwarding headers only when told to.
    host = request.remote
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return str(address)


class CreationRate:
    """At most ``per_minute`` order creations per client in any sliding minute."""

    def __init__(self, per_minute: int) -> None:
        self._per_minute = per_minute
        self._seen: dict[str, collections.deque[float]] = {}

    def check(self, client: str) -> None:
        """Count one creation attempt, or raise ``ClientLimitExceeded`` (nothing counted)."""
        now = time.monotonic()
        window = self._seen.get(client)
        if window is None:
            if len(self._seen) >= MAX_TRACKED_CLIENTS:
                self._prune(now)
            window = self._seen[client] = collections.deque()
        while window and window[0] <= now - RATE_WINDOW_S:
            window.popleft()
        if len(window) >= self._per_minute:
            retry_after = math.ceil(window[0] + RATE_WINDOW_S - now)
            raise ClientLimitExceeded(
                "rate",
                f"at most {self._per_minute} orders a minute from one client",
                retry_after,
            )
        window.append(now)

    def _prune(self, now: float) -> None:
        for client in [c for c, w in self._seen.items() if not w or w[-1] <= now - RATE_WINDOW_S]:
            del self._seen[client]
        if len(self._seen) >= MAX_TRACKED_CLIENTS:
            # Every tracked client is active: forget the one idle longest.
            oldest = min(self._seen, key=lambda c: self._seen[c][-1])
            del self._seen[oldest]
