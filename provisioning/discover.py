"""Finding site gateways on the LAN: they announce ``_vending-gw._tcp.local.`` over mDNS
(``edge/discovery.py``) with their name, site, API path and MQTT port as TXT properties."""

import asyncio
import contextlib
import socket
from dataclasses import dataclass

from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from provisioning.bundle import GATEWAY_SERVICE
from provisioning.errors import DiscoveryError

RESOLVE_TIMEOUT_MS = 3000


@dataclass(frozen=True)
class FoundGateway:
    name: str
    addresses: list[str]
    port: int
    properties: dict[str, str]

    @property
    def endpoints(self) -> list[str]:
        return [f"[{a}]:{self.port}" if ":" in a else f"{a}:{self.port}" for a in self.addresses]


def _decode(props: dict[bytes, bytes | None]) -> dict[str, str]:
    return {
        k.decode("utf-8", "replace"): (v or b"").decode("utf-8", "replace")
        for k, v in props.items()
    }


async def discover_gateways(timeout_s: float, service: str = GATEWAY_SERVICE) -> list[FoundGateway]:
    """Browse for ``timeout_s`` seconds and resolve everything that answered."""
    names: set[str] = set()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            names.add(name)
        elif state_change is ServiceStateChange.Removed:
            names.discard(name)

    try:
        azc = AsyncZeroconf()
    except OSError as exc:
        raise DiscoveryError(f"cannot start mDNS (no multicast interface?): {exc}") from exc
    browser: AsyncServiceBrowser | None = None
    try:
        browser = AsyncServiceBrowser(azc.zeroconf, [service], handlers=[on_change])
        await asyncio.sleep(timeout_s)  # browsing is listening for a while; no condition ends it
        found: list[FoundGateway] = []
        for name in sorted(names):
            info = AsyncServiceInfo(service, name)
            if not await info.async_request(azc.zeroconf, RESOLVE_TIMEOUT_MS):
                continue
            addresses = info.parsed_scoped_addresses() or [
                socket.inet_ntoa(a) for a in info.addresses if len(a) == 4
            ]
            found.append(
                FoundGateway(
                    name=name.removesuffix("." + service),
                    addresses=addresses,
                    port=info.port or 0,
                    properties=_decode(info.properties),
                )
            )
        return found
    finally:
        if browser is not None:
            with contextlib.suppress(Exception):
                await browser.async_cancel()
        await azc.async_close()
