"""A whole site taking UPI through the real Razorpay adapter, against the local test server.

``upi_site`` is ``site`` (tests/e2e/conftest.py) with the cloud's ``razorpay_api_url`` pointing
at a ``tools.razorpay_server.RazorpayTestServer`` (``rzp``) and the tenant's Razorpay account set
through the admin API and registered on the test server, whose signed webhooks go to the cloud's
public listener. Everything is real and on loopback: cloud (SQLite), gateway with its embedded
broker, firmware in the MicroPython unix port.

Timings are short so failures and recoveries happen within a test: the cloud's provider breaker
opens after 2 failures and probes after 0.5 s; the gateway's payments breaker opens after 2
failures and probes when the test moves its clock on (``breaker_clock``); refunds are retried
after 0.1-0.5 s. The cloud's poll of unpaid QR codes waits 60 s, so what a test sees is what the
webhooks did (a test of the poller passes its own settings).

tests/e2e/conftest.py registers the fixtures ``rzp`` and ``upi_site``; ``money_site`` makes a
site with other settings.
"""

import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from cloud_fixtures import MASTER_KEYS
from e2e_site import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    Machine,
    Site,
    cloud_settings,
    gateway_settings,
    start_machines,
)
from polling import wait_for
from razorpay_fixtures import new_credentials

from cloud.db import schema as t
from cloud.server import CloudServer
from edge.app import Gateway
from provisioning.cloud_api import CloudApi
from tools.razorpay_server import RazorpayTestServer

# Quick enough for a test, in the same proportions as production (breaker timeout above the
# provider timeout, so the cloud answers 503 before the gateway gives up on it).
CLOUD_MONEY_SETTINGS: dict[str, Any] = {
    "master_keys": MASTER_KEYS,
    "razorpay_timeout_s": 2.0,
    "razorpay_poll_after_s": 60.0,
    "razorpay_poll_interval_s": 1.0,
    "provider_breaker_threshold": 2,
    "provider_breaker_recovery_s": 0.5,
    "provider_close_backoff_base_s": 0.1,
    "provider_close_backoff_max_s": 0.5,
    "refund_backoff_base_s": 0.1,
    "refund_backoff_max_s": 0.5,
    "refund_check_interval_s": 0.5,
    "refund_check_max_s": 1.0,
}
GATEWAY_MONEY_SETTINGS: dict[str, Any] = {
    "payments_breaker_failures": 2,
    # Never reached by itself within a test: a test moves ``MoneySite.breaker_clock`` on.
    "payments_breaker_recovery_s": 30.0,
    "payments_call_timeout_s": 4.0,
}


class SteppedClock:
    """``time.monotonic`` that a test can move forward (the gateway's payments breaker)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def step(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class MoneySite:
    """``Site`` plus the Razorpay test server and the tenant's account on it."""

    site: Site
    rzp: RazorpayTestServer
    tenant_id: str
    webhook_url: str
    webhook_secret: str = field(repr=False)
    breaker_clock: SteppedClock = field(default_factory=SteppedClock)

    @property
    def machines(self) -> list[Machine]:
        return self.site.machines

    # --- kiosk --------------------------------------------------------------------------------

    async def create_order(
        self, machine: Machine, items: dict[str, int], method: str
    ) -> tuple[int, dict[str, Any]]:
        """POST /orders without asserting the status: (HTTP status, the whole envelope)."""
        body = {
            "machine_id": machine.id,
            "items": [{"id": machine.catalog[slot], "quantity": n} for slot, n in items.items()],
            "payment_method": method,
        }
        async with self.site.http.post("/api/v1/orders", json=body) as response:
            return response.status, dict(await response.json())

    async def upi_order(self, machine: Machine, items: dict[str, int]) -> dict[str, Any]:
        """A UPI order with its QR code made at the test server."""
        order = await self.site.order(machine, items, "upi")
        assert order["status"] == "awaiting_payment", order
        payment = order["payment"]
        assert payment["provider"] == "razorpay", payment
        assert self.qr_code(payment["qr_code_id"])["status"] == "active", payment
        return order

    async def cancel(self, order: dict[str, Any]) -> dict[str, Any]:
        headers = {"X-Order-Token": order["order_token"]}
        async with self.site.http.post(
            f"/api/v1/orders/{order['id']}/cancel", headers=headers
        ) as response:
            payload = await response.json()
            assert response.status == 200, payload
            return dict(payload["data"])

    async def methods(self, machine: Machine) -> dict[str, dict[str, Any]]:
        async with self.site.http.get(f"/api/v1/machines/{machine.id}/payment-methods") as resp:
            assert resp.status == 200
            data = (await resp.json())["data"]
        return {m["method"]: m for m in data["payment_methods"]}

    async def upi_offered(self, machine: Machine, offered: bool = True, within: float = 20) -> None:
        async def state() -> bool:
            return bool((await self.methods(machine))["upi"]["available"]) is offered

        await wait_for(state, within=within)

    async def kiosk_refunds(
        self, order_id: str, status: str, count: int = 1, within: float = 20
    ) -> dict[str, Any]:
        """Wait until the kiosk's order shows ``count`` refunds, all in ``status``."""

        async def shown() -> dict[str, Any] | None:
            order = await self.site.kiosk_order(order_id)
            refunds = order["refunds"]
            if len(refunds) == count and all(r["status"] == status for r in refunds):
                return order
            return None

        return dict(await wait_for(shown, within=within))

    # --- cloud --------------------------------------------------------------------------------

    async def cloud_refunds(self, order_id: str) -> list[dict[str, Any]]:
        return list(await self.site.admin.request("GET", f"/refunds?order_id={order_id}"))

    async def cloud_refunded(
        self, order_id: str, count: int = 1, within: float = 20
    ) -> list[dict[str, Any]]:
        async def settled() -> list[dict[str, Any]] | None:
            refunds = await self.cloud_refunds(order_id)
            done = len(refunds) == count and all(r["status"] == "refunded" for r in refunds)
            return refunds if done else None

        return list(await wait_for(settled, within=within))

    async def cloud_payments(self, order_id: str) -> list[dict[str, Any]]:
        return list(await self.site.admin.request("GET", f"/payments?order_id={order_id}"))

    async def provider_payments(self) -> list[dict[str, Any]]:
        """What the cloud recorded the provider took (no API lists it: reconciliation reads it)."""
        async with self.site.cloud.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(t.provider_payments).where(
                    t.provider_payments.c.tenant_id == self.tenant_id
                )
            )
            return [dict(r._mapping) for r in rows]

    async def provider_events(self) -> list[dict[str, Any]]:
        async with self.site.cloud.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(t.provider_events).where(t.provider_events.c.tenant_id == self.tenant_id)
            )
            return [dict(r._mapping) for r in rows]

    async def cloud_breaker(self) -> dict[str, Any]:
        """The tenant's provider breaker as its admin sees it (GET /payments/provider)."""
        provider = await self.site.admin.request("GET", "/payments/provider")
        return dict(provider["breaker"] or {"state": "closed"})

    async def gateway_breaker(self) -> dict[str, Any]:
        async with self.site.http.get("/health") as response:
            report = (await response.json())["data"]
        return dict(report["breakers"]["gateway_payments"])

    async def reconciliation(self) -> dict[str, Any]:
        today = dt.datetime.now(dt.UTC).date().isoformat()
        return dict(await self.site.admin.request("GET", f"/reports/reconciliation?date={today}"))

    # --- the test server ------------------------------------------------------------------------

    def qr_code(self, qr_id: str) -> dict[str, Any]:
        return dict(next(q for q in self.rzp.state["qr_codes"] if q["id"] == qr_id))

    def refunds_at_provider(self) -> list[dict[str, Any]]:
        return list(self.rzp.state["refunds"])

    async def all_webhooks_delivered(self, within: float = 20) -> None:
        """Every webhook the test server published has reached the cloud with a 2xx."""

        def delivered() -> bool:
            return all(d.state == "delivered" for d in self.rzp.deliveries)

        await self.rzp.wait_until(delivered, within=within)


@contextlib.asynccontextmanager
async def money_site(
    root: Path,
    rzp: RazorpayTestServer,
    *,
    machines: Sequence[str] = ("Lobby", "Canteen"),
    cloud_overrides: dict[str, Any] | None = None,
    gateway_overrides: dict[str, Any] | None = None,
) -> AsyncIterator[MoneySite]:
    """Cloud, gateway and one virtual ESP32 per name in ``machines``, UPI through ``rzp``."""
    breaker_clock = SteppedClock()
    cloud_values = CLOUD_MONEY_SETTINGS | {"razorpay_api_url": rzp.url} | (cloud_overrides or {})
    gateway_values = GATEWAY_MONEY_SETTINGS | (gateway_overrides or {})
    async with contextlib.AsyncExitStack() as stack:
        cloud = await stack.enter_async_context(CloudServer(cloud_settings(root, **cloud_values)))
        tenant_id = await cloud.create_tenant("E2E Vending", ADMIN_EMAIL, ADMIN_PASSWORD)
        admin = await stack.enter_async_context(CloudApi(cloud.api_url))
        await admin.login(ADMIN_EMAIL, ADMIN_PASSWORD)

        creds = new_credentials()
        body = {"provider": "razorpay"} | creds
        provider = await admin.request("PUT", "/payments/provider", body)
        webhook_url = provider["webhook_url"]
        assert webhook_url == f"{cloud.api_url}/api/v1/webhooks/razorpay/{tenant_id}"
        rzp.add_account(creds["key_id"], creds["key_secret"], creds["webhook_secret"], webhook_url)

        site_id = (await admin.create_site("E2E site", "Loopback"))["id"]
        token = await admin.enrollment_token(site_id)
        gateway = await stack.enter_async_context(
            Gateway(
                gateway_settings(root, cloud.api_url, token, **gateway_values),
                breaker_clock=breaker_clock,
            )
        )

        async def enrolled() -> bool:
            return bool(gateway.cloud.status()["enrolled"])

        await wait_for(enrolled)
        http = await stack.enter_async_context(aiohttp.ClientSession(base_url=gateway.http_url))
        site = Site(root, cloud, admin, site_id, gateway, http)
        await start_machines(site, stack, machines)
        money = MoneySite(site, rzp, tenant_id, webhook_url, creds["webhook_secret"], breaker_clock)
        for machine in site.machines:
            await money.upi_offered(machine)  # the tenant's policy reached the gateway
        yield money


@pytest.fixture
async def rzp() -> AsyncIterator[RazorpayTestServer]:
    # Webhook retries and refund settling quick, so a test that fails one does not wait long.
    async with RazorpayTestServer(
        webhook_retry_delays=(0.1, 0.3, 0.6, 1.0), refund_delay_s=0.1, expiry_sweep_s=0.2
    ) as server:
        yield server


@pytest.fixture
async def upi_site(tmp_path: Path, rzp: RazorpayTestServer) -> AsyncIterator[MoneySite]:
    async with money_site(tmp_path, rzp) as money:
        yield money
