"""Attack 3 (intake half): one kiosk order with a value the cloud's sync refuses stopped the whole
site's sync. The kiosk API now validates every field that ends up in a sync event with the type
the sync contract validates it with, so such an order is a 400 at the kiosk, naming the field,
echoing nothing, storing nothing."""

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from gw_support import order_body
from hypothesis import given, seed, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sec_contracts_support import live_gateway
from standalone_site import MachineCreds, machine_state

from cloud.sync.events import _PAYLOADS
from contracts.sync import DispenseRecord, OutboxEvent, StateResponse
from edge.http.schemas import CreateOrderRequest


def snapshot(**overrides: Any) -> dict[str, Any]:
    """An order.snapshot payload as the gateway sends it, before the field under test."""
    now = datetime.now(UTC).isoformat()
    body: dict[str, Any] = {
        "id": "0b5c7a86-4d4c-4b8e-9d55-0d4c1f1e2a3b",
        "machine_id": "M1",
        "status": "awaiting_payment",
        "payment_method": "cash",
        "total_amount": 2500,
        "currency": "INR",
        "items": [
            {
                "id": "i1",
                "catalog_item_id": "M1-A1",
                "slot": "A1",
                "name": "Cola",
                "unit_price": 2500,
                "quantity": 1,
                "dispense_status": "pending",
            }
        ],
        "created_at": now,
        "updated_at": now,
        "version": 1,
    }
    body.update(overrides)
    return body


def cloud_accepts(payload: dict[str, Any]) -> bool:
    """What the cloud's sync intake does with an order.snapshot payload (cloud.sync.events)."""
    try:
        _PAYLOADS["order.snapshot"].model_validate(payload)
    except ValidationError:
        return False
    return True


def kiosk_accepts(body: dict[str, Any]) -> bool:
    try:
        CreateOrderRequest.model_validate(body)
    except ValidationError:
        return False
    return True


# Values the cloud's sync refuses; each was accepted by the kiosk before (or nearly so).
REFUSED: list[tuple[str, Any]] = [
    ("customer_name", "Eve\u0000"),
    ("customer_name", "Eve\u0001"),
    ("customer_name", "Eve\u007f"),
    ("customer_name", "Eve\u0085"),  # C1 NEL
    ("customer_name", "Eve\nMallory"),
    ("customer_name", "Eve\ud800"),  # lone surrogate: no UTF-8, no PostgreSQL text
    ("customer_name", "E" * 101),
    ("customer_name", "   "),
    ("customer_phone", "+919876543210\u0000"),
    ("customer_phone", "+919876543210\n"),
    ("customer_phone", "+\u0969\u0967\u096f\u096e\u096d\u096c\u096b\u096a\u0969\u0968"),  # ३१९८..
    ("machine_id", "M1\u0000"),
]


@pytest.mark.parametrize(("field", "value"), REFUSED)
def test_sync_refuses_each_value(field: str, value: Any) -> None:
    """The premise: the cloud's intake refuses each of these values in an order snapshot."""
    assert not cloud_accepts(snapshot(**{field: value}))


@pytest.mark.parametrize(("field", "value"), REFUSED)
async def test_kiosk_refuses_what_sync_refuses(tmp_path: Path, field: str, value: Any) -> None:
    async with live_gateway(tmp_path) as gateway:
        backlog = await gateway.store.outbox_backlog()
        async with aiohttp.ClientSession(base_url=gateway.http_url) as http:
            # ensure_ascii JSON: a lone surrogate goes out as the escape \\ud800, as in an attack.
            async with http.post("/api/v1/orders", json=order_body(**{field: value})) as resp:
                text = await resp.text()
                status, payload = resp.status, await resp.json()
        assert status == 400, payload
        error = payload["error"]
        assert error["code"] == "validation_error"
        assert any(d["loc"][0] == field for d in error["details"]), error
        # Validation errors never echo the input (customer data).
        assert "Eve" not in text and "9876543210" not in text and "input" not in str(error)
        assert await gateway.store.outbox_backlog() == backlog


ACCEPTED: list[dict[str, Any]] = [
    {"customer_name": "Zoë 😀"},
    {"customer_name": "Ana\u200dMaria"},  # zero-width joiner: needed by several scripts
    {"customer_name": "李小龍"},
    {"customer_name": "E" * 100},
    {"customer_name": " Eve "},  # kept as sent; not blank
    {"customer_phone": "+919876543210"},
]


@pytest.mark.parametrize("fields", ACCEPTED)
async def test_what_the_kiosk_accepts_the_cloud_accepts(
    tmp_path: Path, fields: dict[str, Any]
) -> None:
    async with live_gateway(tmp_path) as gateway:
        async with aiohttp.ClientSession(base_url=gateway.http_url) as http:
            async with http.post("/api/v1/orders", json=order_body(**fields)) as resp:
                assert resp.status == 201, await resp.text()
        events = await gateway.store.outbox_pending(100)
    snapshots = [e for e in events if e.type == "order.snapshot"]
    assert snapshots
    for event in events:
        # What the cloud's intake runs on each event of a pushed batch.
        OutboxEvent.model_validate(event.model_dump(mode="json"))
        _PAYLOADS[event.type].model_validate(event.payload)
    for key, value in fields.items():
        assert snapshots[-1].payload[key] == value


@seed(6)
@settings(max_examples=400, deadline=None)
@given(
    name=st.one_of(st.none(), st.text(max_size=120)),
    phone=st.one_of(
        st.none(),
        st.from_regex(r"\A\+[0-9]{6,17}\Z"),
        st.text(alphabet=st.sampled_from("+0123456789\n \u0000\u0966\u0967"), max_size=18),
    ),
    machine_id=st.text(min_size=0, max_size=70),
    item_id=st.text(min_size=0, max_size=70),
    quantity=st.one_of(st.integers(-2, 12), st.floats(-2, 12), st.booleans()),
)
def test_kiosk_and_sync_agree_on_every_synced_field(
    name: str | None, phone: str | None, machine_id: str, item_id: str, quantity: Any
) -> None:
    """Every kiosk-writable field that reaches a sync event: the kiosk accepts a value exactly
    when the sync contract does (and the gateway would store it as the cloud receives it)."""
    fields = {"customer_name": name, "customer_phone": phone, "machine_id": machine_id}
    kiosk = kiosk_accepts(order_body(**fields, items=[{"id": item_id, "quantity": quantity}]))
    line = snapshot()["items"][0] | {"catalog_item_id": item_id, "quantity": quantity}
    cloud = cloud_accepts(snapshot(**fields, items=[line]))
    assert kiosk == cloud


def test_device_reasons_are_cleaned_not_refused() -> None:
    """A dispense result rides on its reason: a device's control characters are replaced and
    its length cut, so the cloud never refuses (and dead-letters) a money event for its text."""
    record = DispenseRecord(
        cmd_id="c1",
        machine_id="M1",
        order_id="o1",
        item_id="i1",
        slot="A1",
        result="failed",
        reason="jam\u0000\u0001\ud800" + "x" * 100,
    )
    assert record.reason is not None and len(record.reason) == 64
    assert record.reason.startswith("jam\ufffd\ufffd\ufffd")
    _PAYLOADS["dispense.result"].model_validate(record.model_dump(mode="json"))


async def test_a_legacy_catalog_name_does_not_block_orders(tmp_path: Path) -> None:
    """A name saved in the cloud before it refused control characters arrives in a pull: the
    gateway stores it cleaned, so orders for the item still make snapshots the cloud accepts."""
    async with live_gateway(tmp_path) as gateway:
        pulled = {
            "cursor": 2,
            "machines": [
                machine_state(
                    "M1",
                    MachineCreds.new("M1"),
                    {"A1": ("Cola", "drinks", 2500, 5)},
                    name="Machine M1",
                    location="Lobby",
                    version=2,
                ).model_dump(mode="json")
            ],
        }
        pulled["machines"][0]["catalog"][0]["name"] = "Cola\nZero\u0000"
        await gateway.store.apply_state(StateResponse.model_validate(pulled))
        async with aiohttp.ClientSession(base_url=gateway.http_url) as http:
            async with http.post("/api/v1/orders", json=order_body()) as resp:
                assert resp.status == 201, await resp.text()
                item = (await resp.json())["data"]["items"][0]
        assert item["name"] == "Cola\ufffdZero\ufffd"
        events = await gateway.store.outbox_pending(100)
    for event in events:
        _PAYLOADS[event.type].model_validate(event.payload)
