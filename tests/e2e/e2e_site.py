"""A whole site on loopback for the end-to-end tests: cloud, gateway, virtual ESP32s.

Everything here is the real thing: the cloud (SQLite) on ephemeral ports, the gateway with its
embedded amqtt broker, enrolled over the cloud's API and talking mTLS, and the firmware running
in the MicroPython unix port under a 96K heap.
"""

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from cloud_fixtures import cloud_test_settings
from gw_support import enrolled_gateway_settings
from polling import wait_for

from cloud.server import CloudServer
from cloud.settings import CloudSettings
from edge.app import Gateway
from edge.settings import GatewaySettings
from provisioning.cloud_api import CloudApi
from tools.virtual_esp32 import VirtualDevice

ADMIN_EMAIL = "admin@e2e.example"
ADMIN_PASSWORD = "e2e admin password"
CATALOG = [
    {"slot": "A1", "name": "Water", "category": "drinks", "price": 2000, "quantity": 5},
    {"slot": "A2", "name": "Chips", "category": "snacks", "price": 3500, "quantity": 3},
]


def cloud_settings(
    root: Path, *, http_port: int = 0, sync_port: int = 0, **overrides: Any
) -> CloudSettings:
    return cloud_test_settings(
        f"sqlite+aiosqlite:///{root / 'cloud.db'}",
        root / "cloud-data",
        http_port=http_port,
        sync_port=sync_port,
        jwt_secret="e2e-secret-" + "x" * 40,
        **overrides,
    )


def gateway_settings(root: Path, cloud_url: str, token: str, **overrides: Any) -> GatewaySettings:
    return enrolled_gateway_settings(
        root,
        cloud_url,
        token,
        gateway_name="e2e-gateway",
        sync_pull_interval_s=1.0,
        sync_backoff_max_s=1.0,
        dispense_resend_s=1.0,
        dispense_give_up_s=10.0,
        dispense_command_ttl_s=8,  # must expire before the give-up
        engine_tick_s=0.2,
        **overrides,
    )


@dataclass
class Machine:
    id: str
    credentials: dict[str, Any]
    catalog: dict[str, str]  # slot -> catalog item id
    device: VirtualDevice | None = None


@dataclass
class Site:
    root: Path
    cloud: CloudServer
    admin: CloudApi
    site_id: str
    gateway: Gateway
    http: aiohttp.ClientSession
    machines: list[Machine] = field(default_factory=list)

    # --- kiosk side --------------------------------------------------------------------------

    async def order(
        self, machine: Machine, items: dict[str, int], method: str, *, key: str | None = None
    ) -> dict[str, Any]:
        body = {
            "machine_id": machine.id,
            "items": [{"id": machine.catalog[slot], "quantity": n} for slot, n in items.items()],
            "payment_method": method,
        }
        headers = {"Idempotency-Key": key} if key else {}
        async with self.http.post("/api/v1/orders", json=body, headers=headers) as response:
            payload = await response.json()
            assert response.status in (200, 201), payload
            return dict(payload["data"])

    async def kiosk_order(self, order_id: str) -> dict[str, Any]:
        async with self.http.get(f"/api/v1/orders/{order_id}") as response:
            assert response.status == 200
            return dict((await response.json())["data"])

    async def kiosk_catalog(self, machine: Machine) -> dict[str, int]:
        return await self.kiosk_catalog_by_id(machine.id)

    async def kiosk_catalog_by_id(self, machine_id: str) -> dict[str, int]:
        async with self.http.get(f"/api/v1/machines/{machine_id}/catalog") as response:
            assert response.status == 200
            return {item["slot"]: item["quantity"] for item in (await response.json())["data"]}

    async def finished(self, order_id: str, within: float = 30.0) -> dict[str, Any]:
        terminal = {"completed", "partially_completed", "failed", "refund_pending", "cancelled"}

        async def done() -> dict[str, Any] | None:
            order = await self.kiosk_order(order_id)
            return order if order["status"] in terminal else None

        return dict(await wait_for(done, within=within))

    # --- cloud side ---------------------------------------------------------------------------

    async def cloud_orders(self) -> list[dict[str, Any]]:
        return await self.admin.orders(limit=100)

    async def synced(self, order_id: str, status: str, within: float = 20.0) -> dict[str, Any]:
        """Wait until the cloud's orders list shows ``order_id`` with ``status``; return the
        order as ``GET /orders/{id}`` gives it (with items)."""

        async def arrived() -> bool:
            orders = [o for o in await self.cloud_orders() if o["id"] == order_id]
            return bool(orders) and orders[0]["status"] == status

        await wait_for(arrived, within=within)
        return await self.admin.order(order_id)


async def onboard(admin: CloudApi, site_id: str, name: str) -> Machine:
    result = await admin.onboard_machine(name=name, site_id=site_id, catalog=CATALOG)
    catalog = {item["slot"]: item["id"] for item in result["machine"]["catalog"]}
    return Machine(result["machine"]["id"], result["credentials"], catalog)


def device_config(machine: Machine, mqtt_port: int) -> dict[str, object]:
    return {
        "machine_id": machine.id,
        "mqtt_host": "127.0.0.1",
        "mqtt_port": mqtt_port,
        "mqtt_password": machine.credentials["mqtt_password"],
        "command_key": machine.credentials["command_key"],
        "sim_slots": {item["slot"]: item["quantity"] for item in CATALOG},
        "motor_ms": 50,
        "drop_timeout_ms": 300,
        "resend_interval_s": 1,
        "health_interval_s": 5,
    }


async def start_machines(
    site: Site, stack: contextlib.AsyncExitStack, names: Sequence[str]
) -> None:
    """Onboard one machine per name through the API, wait until the gateway has pulled them,
    start each one's firmware (closed with ``stack``) and wait until all are online."""
    gateway = site.gateway
    site.machines = [await onboard(site.admin, site.site_id, name) for name in names]

    async def machines_pulled() -> bool:
        return len(await gateway.store.list_machines()) == len(site.machines)

    await wait_for(machines_pulled)
    for machine in site.machines:
        flash = site.root / f"flash-{machine.id}"
        VirtualDevice.install(flash, device_config(machine, gateway.mqtt_port))
        machine.device = await stack.enter_async_context(VirtualDevice(flash))
    for machine in site.machines:
        assert machine.device is not None
        await machine.device.wait_online(timeout=20)

    async def all_online() -> bool:
        return all(m.online for m in await gateway.store.list_machines())

    await wait_for(all_online)
