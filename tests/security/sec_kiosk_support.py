"""Support for the kiosk API attack tests: a real gateway (SQLite, embedded broker) with machine
M1 online as the device double (signed cash credits), and kiosk API clients on distinct loopback
addresses, so the gateway sees a customer's kiosk and an attacker's laptop as two peers."""

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from gw_device_double import DeviceDouble
from gw_support import PaymentsDouble, gateway_settings, load_site, order_body
from gw_support import creds as creds  # re-exported: the tests take it as a fixture
from polling import wait_for
from standalone_site import MachineCreds

from edge.app import Gateway

CUSTOMER_ADDRESS = "127.0.0.2"
ATTACKER_ADDRESS = "127.0.0.3"


@dataclass
class KioskClient:
    """One host on the site LAN speaking the kiosk API."""

    http: aiohttp.ClientSession

    async def order(
        self, *, token: str | None = None, key: str | None = None, **fields: Any
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """POST /orders (``order_body`` with ``fields``): status, envelope, headers."""
        headers: dict[str, str] = {}
        if token is not None:
            headers["X-Order-Token"] = token
        if key is not None:
            headers["Idempotency-Key"] = key
        async with self.http.post(
            "/api/v1/orders", json=order_body(**fields), headers=headers
        ) as response:
            return response.status, await response.json(), dict(response.headers)

    async def cancel(self, order_id: str, token: str | None = None) -> tuple[int, dict[str, Any]]:
        headers = {"X-Order-Token": token} if token is not None else {}
        async with self.http.post(f"/api/v1/orders/{order_id}/cancel", headers=headers) as response:
            return response.status, await response.json()


@contextlib.asynccontextmanager
async def kiosk_client(gateway: Gateway, address: str) -> AsyncIterator[KioskClient]:
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(base_url=gateway.http_url, connector=connector) as http:
        yield KioskClient(http)


@dataclass
class KioskSite:
    gateway: Gateway
    m1: DeviceDouble
    payments: PaymentsDouble


@contextlib.asynccontextmanager
async def kiosk_site(
    tmp_path: Path, creds: dict[str, MachineCreds], **overrides: Any
) -> AsyncIterator[KioskSite]:
    """A gateway with the default per-client limits unless ``overrides`` say otherwise, M1
    online as the device double and a payments double for sandbox orders."""
    payments = PaymentsDouble()
    async with Gateway(gateway_settings(tmp_path / "gw", **overrides), payments=payments) as gw:
        await load_site(gw, creds)
        m1 = creds["M1"]
        async with DeviceDouble(m1.id, m1.secret, m1.command_key, gw.mqtt_port) as device:

            async def online() -> bool:
                return (await gw.store.device_counts())["online"] >= 1

            await wait_for(online)
            yield KioskSite(gw, device, payments)


async def metric(gateway: Gateway, name: str) -> str:
    """The /metrics text's lines for ``name``."""
    async with (
        aiohttp.ClientSession(base_url=gateway.http_url) as http,
        http.get("/metrics") as response,
    ):
        text = await response.text()
    return "\n".join(line for line in text.splitlines() if line.startswith(name))
