"""Attack B on the kiosk API: one anonymous host holds stock and floods orders. Before the
per-client limits, one sandbox order could reserve a whole item for the payment timeout and
orders (each a payment in the cloud) could be created without bound. Now each client address
may hold a few unpaid orders and units and create a bounded number of orders a minute; over a
limit it gets 429 with Retry-After, and other clients still order."""

from pathlib import Path
from typing import Any

from polling import wait_for
from sec_kiosk_support import (
    ATTACKER_ADDRESS,
    CUSTOMER_ADDRESS,
    creds,
    kiosk_client,
    kiosk_site,
    metric,
)
from standalone_site import MachineCreds

__all__ = ["creds"]  # a fixture

SANDBOX_M1 = {"payment_method": "sandbox", "items": [{"id": "M1-A2", "quantity": 1}]}
SANDBOX_M2 = {
    "payment_method": "sandbox",
    "machine_id": "M2",
    "items": [{"id": "M2-A1", "quantity": 1}],
}


def assert_too_many(
    status: int, payload: dict[str, Any], headers: dict[str, str], limit: str
) -> int:
    """The 429 envelope of ``limit``; returns its Retry-After seconds."""
    assert status == 429, payload
    error = payload["error"]
    assert error["code"] == "too_many_orders" and error["details"]["limit"] == limit
    retry_after = headers["Retry-After"]
    assert retry_after.isdigit() and int(retry_after) >= 1
    assert error["details"]["retry_after_s"] == int(retry_after)
    return int(retry_after)


async def test_open_orders_per_client_are_bounded(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    """Default limits: two unpaid orders per client, the third is 429 until one ends."""
    async with (
        kiosk_site(tmp_path, creds) as site,
        kiosk_client(site.gateway, ATTACKER_ADDRESS) as attacker,
        kiosk_client(site.gateway, CUSTOMER_ADDRESS) as customer,
    ):
        _, first, _ = await attacker.order(**SANDBOX_M1)
        status, _, _ = await attacker.order(**SANDBOX_M2)
        assert status == 201
        status, refused, headers = await attacker.order(**SANDBOX_M1)
        retry_after = assert_too_many(status, refused, headers, "open_orders")
        assert retry_after <= site.gateway.settings.order_payment_timeout_s
        assert len(site.payments.requests) == 2  # no payment was created for the refused one
        assert await site.gateway.store.stock("M1-A2") == (2, 1)
        # Another client still orders (cash and sandbox) meanwhile.
        status, _, _ = await customer.order()
        assert status == 201
        status, _, _ = await customer.order(**SANDBOX_M1)
        assert status == 201
        # Once one of its orders ends, the attacker may order again.
        status, _ = await attacker.cancel(first["data"]["id"], first["data"]["order_token"])
        assert status == 200
        status, _, _ = await attacker.order(**SANDBOX_M1)
        assert status == 201
        assert 'reason="open_orders"} 1.0' in await metric(
            site.gateway, "gateway_kiosk_refused_total"
        )


async def test_reserved_units_per_client_are_bounded(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    async with (
        kiosk_site(
            tmp_path,
            creds,
            kiosk_max_open_orders_per_client=5,
            kiosk_max_reserved_units_per_client=6,
        ) as site,
        kiosk_client(site.gateway, ATTACKER_ADDRESS) as attacker,
        kiosk_client(site.gateway, CUSTOMER_ADDRESS) as customer,
    ):
        # One order over the limit can never pass: no Retry-After would help.
        status, refused, _ = await attacker.order(
            payment_method="sandbox",
            items=[{"id": "M1-A1", "quantity": 5}, {"id": "M1-A2", "quantity": 2}],
        )
        assert status == 409 and refused["error"]["code"] == "order_too_large"
        status, _, _ = await attacker.order(
            payment_method="sandbox", items=[{"id": "M1-A1", "quantity": 5}]
        )
        assert status == 201
        status, refused, headers = await attacker.order(
            payment_method="sandbox", machine_id="M2", items=[{"id": "M2-A1", "quantity": 2}]
        )
        assert_too_many(status, refused, headers, "reserved_units")
        assert await site.gateway.store.stock("M2-A1") == (3, 0)
        status, _, _ = await customer.order(**SANDBOX_M2)
        assert status == 201
        assert len(site.payments.requests) == 2


async def test_order_creation_rate_per_client_is_bounded(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    """Every create counts, refused ones included; X-Forwarded-For does not change who the
    client is."""
    async with (
        kiosk_site(tmp_path, creds, kiosk_orders_per_minute_per_client=5) as site,
        kiosk_client(site.gateway, ATTACKER_ADDRESS) as attacker,
        kiosk_client(site.gateway, CUSTOMER_ADDRESS) as customer,
    ):
        for _ in range(5):
            status, _, _ = await attacker.order(machine_id="M9")
            assert status == 404
        status, refused, headers = await attacker.order(**SANDBOX_M1)
        assert assert_too_many(status, refused, headers, "rate") <= 60
        for forwarded in ("10.0.0.7", CUSTOMER_ADDRESS):
            async with attacker.http.post(
                "/api/v1/orders",
                json={
                    "machine_id": "M1",
                    "items": [{"id": "M1-A1", "quantity": 1}],
                    "payment_method": "sandbox",
                },
                headers={"X-Forwarded-For": forwarded},
            ) as response:
                assert response.status == 429
        assert site.payments.requests == []
        status, _, _ = await customer.order(**SANDBOX_M1)
        assert status == 201
        assert 'reason="rate"} 3.0' in await metric(site.gateway, "gateway_kiosk_refused_total")


async def test_unpaid_orders_expire_and_free_the_client(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    """Unpaid orders with no payment still expire after order_payment_timeout_s, which ends
    what they held against the client's limits."""
    async with (
        kiosk_site(
            tmp_path, creds, order_payment_timeout_s=1.0, kiosk_orders_per_minute_per_client=1000
        ) as site,  # the polling below retries the create
        kiosk_client(site.gateway, ATTACKER_ADDRESS) as attacker,
    ):
        await attacker.order(**SANDBOX_M1)
        await attacker.order(**SANDBOX_M2)
        status, refused, headers = await attacker.order(**SANDBOX_M1)
        assert assert_too_many(status, refused, headers, "open_orders") == 1

        async def freed() -> bool:
            status, _, _ = await attacker.order(**SANDBOX_M1)
            return status == 201

        await wait_for(freed, within=10)
        assert await site.gateway.store.stock("M2-A1") == (3, 0)
