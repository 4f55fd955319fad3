"""Kiosk API on a real gateway: validation, stock, idempotency, cancel, SSE, health, metrics."""

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from gw_support import order_body, order_status

from edge.app import Gateway


async def post_order(
    http: aiohttp.ClientSession, body: Any, key: str | None = None, token: str | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Idempotency-Key": key} if key else {}
    if token:
        headers["X-Order-Token"] = token
    async with http.post("/api/v1/orders", json=body, headers=headers) as response:
        return response.status, await response.json()


def assert_envelope(payload: dict[str, Any], code: str) -> None:
    assert payload["success"] is False
    error = payload["error"]
    assert error["code"] == code
    assert set(error) == {"code", "message", "details", "timestamp", "requestId"}
    assert error["requestId"]


async def test_machines_and_catalog(http: aiohttp.ClientSession) -> None:
    async with http.get("/api/v1/machines") as response:
        machines = (await response.json())["data"]
    assert [(m["id"], m["online"]) for m in machines] == [("M1", False), ("M2", False)]
    async with http.get("/api/v1/machines/M1/catalog") as response:
        catalog = (await response.json())["data"]
    assert {item["slot"]: item["quantity"] for item in catalog} == {"A1": 5, "A2": 2, "B1": 0}
    assert catalog[0]["price"] == 2000 and catalog[0]["currency"] == "INR"
    async with http.get("/api/v1/machines/NOPE/catalog") as response:
        assert response.status == 404
        assert_envelope(await response.json(), "machine_not_found")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (order_body(items=[{"id": "M1-A1", "quantity": 0}]), "validation_error"),
        (order_body(items=[{"id": "M1-A1", "quantity": 11}]), "validation_error"),
        (order_body(items=[{"id": "M1-A1", "quantity": 1.5}]), "validation_error"),
        (order_body(items=[]), "validation_error"),
        (order_body(customer_phone="98765 43210"), "validation_error"),
        (order_body(payment_method="card"), "validation_error"),
        (
            order_body(items=[{"id": "M1-A1", "quantity": 1}, {"id": "M1-A1", "quantity": 2}]),
            "validation_error",
        ),
        (order_body(items=[{"id": "M2-A1", "quantity": 1}]), "unknown_item"),
        (["not", "an", "object"], "validation_error"),
    ],
)
async def test_bad_orders_get_400(http: aiohttp.ClientSession, body: Any, code: str) -> None:
    status, payload = await post_order(http, body)
    assert status == 400
    assert_envelope(payload, code)


@pytest.mark.parametrize(
    "raw",
    [
        b"{nope",
        b"[" * 5000 + b"]" * 5000,  # nesting deep enough to exhaust the parser's recursion
        b'{"machine_id": "M1", "items": [{"id": "M1-A1", "quantity": ' + b"9" * 5000 + b"}]}",
        b'{"machine_id": "M1", "items": [{"id": "M1-A1", "quantity": NaN}]}',
    ],
    ids=["broken", "deep", "huge-int", "nan"],
)
async def test_malformed_json_is_400(http: aiohttp.ClientSession, raw: bytes) -> None:
    headers = {"Content-Type": "application/json"}
    async with http.post("/api/v1/orders", data=raw, headers=headers) as response:
        assert response.status == 400
        assert_envelope(await response.json(), "malformed_json")


async def test_validation_errors_do_not_echo_input(http: aiohttp.ClientSession) -> None:
    status, payload = await post_order(http, order_body(customer_phone="+0123-secret"))
    assert status == 400
    assert "+0123-secret" not in json.dumps(payload)


async def test_unknown_machine_order_and_route(http: aiohttp.ClientSession) -> None:
    status, payload = await post_order(http, order_body(machine_id="M9"))
    assert status == 404
    assert_envelope(payload, "machine_not_found")
    async with http.get("/api/v1/orders/does-not-exist") as response:
        assert response.status == 404
        assert_envelope(await response.json(), "order_not_found")
    async with http.get("/api/v1/nothing-here") as response:
        assert response.status == 404
        assert (await response.json())["success"] is False


async def test_order_validation_details_are_pydantic_errors(http: aiohttp.ClientSession) -> None:
    status, payload = await post_order(
        http, order_body(customer_phone="+0123", items=[{"id": "M1-A1", "quantity": 0}])
    )
    assert status == 400
    locations = {tuple(d["loc"]) for d in payload["error"]["details"]}
    assert ("customer_phone",) in locations and ("items", 0, "quantity") in locations


async def test_insufficient_stock_is_409(http: aiohttp.ClientSession, gateway: Gateway) -> None:
    status, payload = await post_order(http, order_body(items=[{"id": "M1-A2", "quantity": 3}]))
    assert status == 409
    assert_envelope(payload, "insufficient_stock")
    assert payload["error"]["details"] == [{"id": "M1-A2", "requested": 3, "available": 2}]
    status, _ = await post_order(http, order_body(items=[{"id": "M1-B1", "quantity": 1}]))
    assert status == 409
    status, first = await post_order(http, order_body(items=[{"id": "M1-A2", "quantity": 2}]))
    assert status == 201
    assert await gateway.store.stock("M1-A2") == (2, 2)
    # One open cash order per machine: the unpaid first one is superseded by its token's holder
    # and its units are available to the new one (reservations held by open orders:
    # test_gw_store; without the token: tests/security/test_sec_kiosk_orders.py).
    status, _ = await post_order(
        http, order_body(items=[{"id": "M1-A2", "quantity": 1}]), token=first["data"]["order_token"]
    )
    assert status == 201
    assert await order_status(gateway, first["data"]["id"]) == "cancelled"
    assert await gateway.store.stock("M1-A2") == (2, 1)


async def test_idempotency_key_replays_the_same_order(http: aiohttp.ClientSession) -> None:
    body = order_body(customer_phone="+919876543210", customer_name="Asha")
    status, first = await post_order(http, body, key="kiosk-1-order-0001")
    assert status == 201
    order = first["data"]
    assert order["status"] == "awaiting_payment" and order["total_amount"] == 2000
    assert order["items"][0]["dispense_status"] == "pending"
    assert "customer_phone" not in order and "customer_name" not in order
    status, again = await post_order(http, body, key="kiosk-1-order-0001")
    assert status == 200 and again["data"]["id"] == order["id"]
    # The replay answers a fresh token (only hashes are kept); the lost first one is retired.
    assert again["data"]["order_token"] != order["order_token"]
    status, conflict = await post_order(
        http, order_body(items=[{"id": "M1-A1", "quantity": 2}]), key="kiosk-1-order-0001"
    )
    assert status == 409
    assert_envelope(conflict, "idempotency_conflict")
    async with http.get("/api/v1/machines/M1/catalog") as response:
        catalog = {i["slot"]: i["quantity"] for i in (await response.json())["data"]}
    assert catalog["A1"] == 4  # reserved once, not twice
    status, _ = await post_order(http, body, key="bad key!")
    assert status == 400


async def test_cancel_releases_stock_and_only_once(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    _, created = await post_order(http, order_body(items=[{"id": "M1-A2", "quantity": 2}]))
    order_id = created["data"]["id"]
    token = {"X-Order-Token": created["data"]["order_token"]}
    assert await gateway.store.stock("M1-A2") == (2, 2)
    async with http.post(f"/api/v1/orders/{order_id}/cancel", headers=token) as response:
        assert response.status == 200
        cancelled = (await response.json())["data"]
    assert cancelled["status"] == "cancelled"
    assert cancelled["items"][0]["dispense_status"] == "not_dispensed"
    assert await gateway.store.stock("M1-A2") == (2, 0)
    async with http.post(f"/api/v1/orders/{order_id}/cancel", headers=token) as response:
        assert response.status == 409
        assert_envelope(await response.json(), "order_conflict")


async def test_sandbox_without_cloud_is_503_and_releases_stock(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    status, payload = await post_order(http, order_body(payment_method="sandbox"))
    assert status == 503
    assert_envelope(payload, "payment_unavailable")
    assert await gateway.store.stock("M1-A1") == (5, 0)
    rows = await gateway.store.query("SELECT status FROM orders")
    assert rows == [{"status": "cancelled"}]


async def read_sse(response: aiohttp.ClientResponse) -> dict[str, Any] | None:
    """The next ``event: order`` payload, or None at the end of the stream."""
    event, data = None, None
    while True:
        line = await response.content.readline()
        if not line:
            return None
        text = line.decode().rstrip("\n")
        if text.startswith("event:"):
            event = text.split(":", 1)[1].strip()
        elif text.startswith("data:"):
            data = text.split(":", 1)[1].strip()
        elif text == "" and event == "order" and data is not None:
            return json.loads(data)  # type: ignore[no-any-return]


async def test_sse_streams_changes_until_terminal(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    _, created = await post_order(http, order_body())
    order_id = created["data"]["id"]
    async with http.get(f"/api/v1/orders/{order_id}/events") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        first = await read_sse(response)
        assert first is not None and first["status"] == "awaiting_payment"
        await gateway.engine.cancel(order_id)
        async with asyncio.timeout(5):
            last = await read_sse(response)
            assert last is not None and last["status"] == "cancelled"
            assert last["version"] > first["version"]
            assert await read_sse(response) is None  # closed after the terminal state
    assert await order_status(gateway, order_id) == "cancelled"
    async with http.get("/api/v1/orders/nope/events") as response:
        assert response.status == 404


async def test_unpaid_orders_expire(tmp_path: Any, creds: Any) -> None:
    from gw_support import gateway_settings, load_site
    from polling import wait_for

    settings = gateway_settings(tmp_path / "gw", order_payment_timeout_s=0.3)
    async with Gateway(settings) as gw:
        await load_site(gw, creds)
        async with aiohttp.ClientSession(base_url=gw.http_url) as http:
            _, created = await post_order(http, order_body())
        order_id = created["data"]["id"]

        async def expired() -> bool:
            return await order_status(gw, order_id) == "cancelled"

        await wait_for(expired, within=5)
        assert await gw.store.stock("M1-A1") == (5, 0)


async def test_health_and_metrics(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    async with http.get("/health") as response:
        assert response.status == 200
        health = (await response.json())["data"]
    assert health["status"] == "ok"
    assert health["broker"]["mode"] == "embedded" and health["broker"]["link_connected"]
    assert health["store"]["ok"] is True
    assert health["cloud"] == {"configured": False}
    assert health["devices"] == {"online": 0, "offline": 2}
    await post_order(http, order_body())
    async with http.get("/metrics") as response:
        text = await response.text()
    assert 'gateway_orders_created_total{payment_method="cash"} 1.0' in text
    assert 'gateway_devices{state="offline"} 2.0' in text
    assert "gateway_outbox_backlog 1.0" in text
