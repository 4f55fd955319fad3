"""Helpers for the gateway money tests (refunds, machine credit, slots, payment dead letters):
a site with a chosen money policy, kiosk orders, payment updates and outbox reads."""

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from gw_device_double import DeviceDouble
from gw_support import PaymentsDouble, gateway_settings, make_machine, order_status
from polling import wait_for
from standalone_site import MachineCreds

from contracts.sync import MoneyPolicy, PaymentUpdate, StateResponse
from edge.app import Gateway

TERMINAL = frozenset({"completed", "partially_completed", "failed", "cancelled"})


def site_state(
    creds: dict[str, MachineCreds],
    *,
    policy: MoneyPolicy | None = None,
    cursor: int = 1,
    version: int = 1,
    slot_switches: dict[str, tuple[bool, int]] | None = None,
) -> StateResponse:
    """M1 (A1: 5, A2: 2 at 2000 each) and M2 (A1: 3); ``slot_switches`` sets M1 slots'
    (enabled, enable_rev) as an operator in the cloud would."""
    m1 = make_machine("M1", creds["M1"], stock={"A1": 5, "A2": 2}, version=version)
    switches = slot_switches or {}
    catalog = [
        item.model_copy(
            update={"enabled": switches[item.slot][0], "enable_rev": switches[item.slot][1]}
        )
        if item.slot in switches
        else item
        for item in m1.catalog
    ]
    m1 = m1.model_copy(update={"catalog": catalog, "money_policy": policy or MoneyPolicy()})
    m2 = make_machine("M2", creds["M2"], stock={"A1": 3}, version=version)
    return StateResponse(cursor=cursor, machines=[m1, m2])


@contextlib.asynccontextmanager
async def money_gateway(
    data_dir: Path,
    creds: dict[str, MachineCreds],
    *,
    policy: MoneyPolicy | None = None,
    payments: PaymentsDouble | None = None,
    load: bool = True,
) -> AsyncIterator[Gateway]:
    """A real gateway (SQLite, amqtt) with a payments double; ``load=False`` on a restart."""
    async with Gateway(gateway_settings(data_dir), payments=payments or PaymentsDouble()) as gw:
        if load:
            await gw.store.apply_state(site_state(creds, policy=policy))
        yield gw


def device(gateway: Gateway, creds: MachineCreds, **kwargs: Any) -> DeviceDouble:
    return DeviceDouble(creds.id, creds.secret, creds.command_key, gateway.mqtt_port, **kwargs)


async def kiosk_order(
    gateway: Gateway, items: dict[str, int], method: str = "sandbox", machine_id: str = "M1"
) -> dict[str, Any]:
    """Create an order through the kiosk API; ``items``: catalog item id -> quantity."""
    body = {
        "machine_id": machine_id,
        "items": [{"id": item, "quantity": qty} for item, qty in items.items()],
        "payment_method": method,
    }
    async with (
        aiohttp.ClientSession(base_url=gateway.http_url) as http,
        http.post("/api/v1/orders", json=body) as response,
    ):
        assert response.status == 201, await response.text()
        return (await response.json())["data"]  # type: ignore[no-any-return]


async def kiosk_get(gateway: Gateway, path: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession(base_url=gateway.http_url) as http,
        http.get(path) as response,
    ):
        return response.status, await response.json()


def captured(order: dict[str, Any], **overrides: Any) -> PaymentUpdate:
    """The cloud's confirmation that ``order``'s payment was captured in full."""
    values: dict[str, Any] = {
        "payment_id": order["payment"]["payment_id"],
        "order_id": order["id"],
        "machine_id": order["machine_id"],
        "status": "captured",
        "amount": order["total_amount"],
        "currency": order["currency"],
        "provider": "sandbox",
    }
    return PaymentUpdate(**(values | overrides))


async def until_terminal(gateway: Gateway, order_id: str, within: float = 20) -> str:
    async def ended() -> str | None:
        status = await order_status(gateway, order_id)
        return status if status in TERMINAL else None

    return await wait_for(ended, within=within)  # type: ignore[no-any-return]


async def outbox(gateway: Gateway, event_type: str) -> list[dict[str, Any]]:
    """Payloads of every outbox event of ``event_type`` (sent or not), oldest first."""
    rows = await gateway.store.query(
        "SELECT payload FROM outbox WHERE type = ? ORDER BY seq", [event_type]
    )
    return [json.loads(row["payload"]) for row in rows]
