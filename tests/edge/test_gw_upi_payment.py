"""UPI orders on the real gateway: the payment JSON the kiosk (and scripts outside) rely on, the
payment methods a machine offers, and refusals that say nothing was charged. The cloud's payment
role is ``upi_payments_double.UpiPayments`` (the e2e tests run the real cloud and Razorpay test
server)."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from gw_support import gateway_settings, make_machine, order_body, order_status
from polling import wait_for
from standalone_site import MachineCreds
from upi_payments_double import UpiPayments, load_upi_site

from contracts.sync import PaymentUpdate
from edge.app import Gateway

KEY = {"Idempotency-Key": "key-upi-0001"}


async def post(
    http: aiohttp.ClientSession, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    async with http.post(path, json=body, headers=headers or {}) as response:
        return response.status, await response.json()


async def get(http: aiohttp.ClientSession, path: str) -> tuple[int, dict[str, Any]]:
    async with http.get(path) as response:
        return response.status, await response.json()


def methods(data: dict[str, Any] | list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    listed = data["payment_methods"] if isinstance(data, dict) else data
    return {m["method"]: m for m in listed}


@pytest.fixture
async def upi_gateway(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> AsyncIterator[tuple[Gateway, UpiPayments]]:
    payments = UpiPayments()
    async with Gateway(gateway_settings(tmp_path / "gw"), payments=payments) as gw:
        # M1's tenant has UPI; M2's does not.
        await load_upi_site(
            gw,
            [
                make_machine("M1", creds["M1"], stock={"A1": 5, "A2": 2}),
                make_machine("M2", creds["M2"], stock={"A1": 3}),
            ],
            upi={"M2": False},
        )
        yield gw, payments


async def test_upi_order_carries_the_payment_contract(
    upi_gateway: tuple[Gateway, UpiPayments],
) -> None:
    gw, payments = upi_gateway
    async with aiohttp.ClientSession(base_url=gw.http_url) as http:
        status, created = await post(
            http,
            "/api/v1/orders",
            order_body(payment_method="upi"),
            KEY,
        )
        assert status == 201, created
        order = created["data"]
        assert order["payment_method"] == "upi"
        assert order["status"] == "awaiting_payment"
        request = payments.requests[0]
        assert (request.method, request.amount, request.order_id) == ("upi", 2000, order["id"])
        assert request.idempotency_key == order["id"]
        payment = order["payment"]
        # The contract: {payment_id, provider, status, qr_code_id?, upi_uri?, image_url?}.
        assert payment["payment_id"] == "pay_1"
        assert payment["provider"] == "razorpay"
        assert payment["status"] == "created"
        assert payment["qr_code_id"] == "qr_test000001"
        assert payment["upi_uri"].startswith("upi://pay?") and "am=20.00" in payment["upi_uri"]
        assert payment["image_url"] == "https://rzp.io/i/qr1"
        # The money fields the kiosk shows, all zero for a fresh order.
        for field in ("refund_amount", "credit_amount", "overpaid_amount", "machine_credit"):
            assert order[field] == 0, field
        assert order["refunds"] == []

        # The same shape on read, and the QR code is drawn from the UPI URI.
        _, read = await get(http, f"/api/v1/orders/{order['id']}")
        assert read["data"]["payment"] == payment
        async with http.get(f"/kiosk/orders/{order['id']}/qr.svg") as response:
            assert response.status == 200
            assert response.content_type == "image/svg+xml"

        # Replaying the key answers the same order and asks the cloud for nothing more.
        status, replay = await post(
            http,
            "/api/v1/orders",
            order_body(payment_method="upi"),
            KEY,
        )
        assert status == 200 and replay["data"]["id"] == order["id"]
        assert payments.calls == 1

    # A capture from the cloud pays it.
    await gw.store.apply_payment_update(
        "chan-1",
        PaymentUpdate(
            payment_id="pay_1",
            order_id=order["id"],
            machine_id="M1",
            status="captured",
            amount=2000,
            currency="INR",
            provider="razorpay",
            provider_payment_id="pay_RZP1",
        ),
    )

    async def paid() -> bool:
        return await order_status(gw, order["id"]) != "awaiting_payment"

    await wait_for(paid, within=10)
    assert (await gw.store.get_order(order["id"])).paid_amount == 2000


async def test_payment_methods_follow_the_tenant_policy(
    upi_gateway: tuple[Gateway, UpiPayments],
) -> None:
    gw, payments = upi_gateway
    async with aiohttp.ClientSession(base_url=gw.http_url) as http:
        status, m1 = await get(http, "/api/v1/machines/M1/payment-methods")
        assert status == 200
        assert m1["data"]["machine_id"] == "M1"
        offered = methods(m1["data"])
        assert offered["cash"] == {
            "method": "cash",
            "available": True,
            "reason": None,
            "message": None,
            "retry_in_s": None,
        }
        assert offered["upi"]["available"] is True

        _, listed = await get(http, "/api/v1/machines")
        by_id = {m["id"]: m for m in listed["data"]}
        assert methods(by_id["M1"]["payment_methods"])["upi"]["available"] is True
        m2_upi = methods(by_id["M2"]["payment_methods"])["upi"]
        assert m2_upi["available"] is False and m2_upi["reason"] == "not_enabled"
        assert "pay with cash" in m2_upi["message"]
        assert methods(by_id["M2"]["payment_methods"])["cash"]["available"] is True

        # UPI where the tenant has none: refused at once, nothing asked of the cloud.
        body = order_body(machine_id="M2", items=[{"id": "M2-A1", "quantity": 1}])
        status, refused = await post(http, "/api/v1/orders", body | {"payment_method": "upi"})
        assert status == 503
        error = refused["error"]
        assert error["code"] == "payment_unavailable"
        assert error["details"]["reason"] == "not_enabled"
        assert error["details"]["alternatives"] == ["cash"]
        assert "Nothing was charged" in error["message"]
        assert payments.calls == 0
        assert await gw.store.stock("M2-A1") == (3, 0)
        rows = await gw.store.query("SELECT status, cancel_reason FROM orders")
        assert rows == [{"status": "cancelled", "cancel_reason": "payment_unavailable"}]

        status, _ = await get(http, "/api/v1/machines/NOPE/payment-methods")
        assert status == 404


async def test_upi_without_a_cloud_link_is_offline(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    async with Gateway(gateway_settings(tmp_path / "gw")) as gw:
        await load_upi_site(gw, [make_machine("M1", creds["M1"], stock={"A1": 5})])
        async with aiohttp.ClientSession(base_url=gw.http_url) as http:
            _, data = await get(http, "/api/v1/machines/M1/payment-methods")
            upi = methods(data["data"])["upi"]
            assert (upi["available"], upi["reason"]) == (False, "offline")
            status, refused = await post(http, "/api/v1/orders", order_body(payment_method="upi"))
            assert status == 503
            assert refused["error"]["details"]["reason"] == "offline"
            assert await gw.store.stock("M1-A1") == (5, 0)


async def test_cloud_refusal_cancels_and_does_not_count_against_the_breaker(
    upi_gateway: tuple[Gateway, UpiPayments],
) -> None:
    gw, payments = upi_gateway
    payments.mode = "refuse"
    async with aiohttp.ClientSession(base_url=gw.http_url) as http:
        for _ in range(4):
            status, refused = await post(http, "/api/v1/orders", order_body(payment_method="upi"))
            assert status == 503
            assert refused["error"]["details"]["reason"] == "refused"
    assert payments.calls == 4  # every one was asked: a 4xx is an answer
    assert gw.engine.payments_breaker.state == "closed"
    assert await gw.store.stock("M1-A1") == (5, 0)
