"""Pushing outbox events: stored once, acked by high-water mark, orders mirrored."""

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa

from cloud.db import schema as t


def _now() -> str:
    return datetime.now(UTC).isoformat()


def order_payload(order_id, machine_id, *, version, status="completed", dispensed=1):
    return {
        "id": order_id,
        "machine_id": machine_id,
        "status": status,
        "payment_method": "cash",
        "total_amount": 3500,
        "paid_amount": 3500,
        "currency": "INR",
        "customer_name": "Asha",
        "items": [
            {
                "id": f"{order_id}-1",
                "catalog_item_id": "cat-1",
                "slot": "A1",
                "name": "Cola",
                "unit_price": 2500,
                "quantity": 1,
                "dispensed": dispensed,
                "dispense_status": "dispensed" if dispensed else "pending",
            },
            {
                "id": f"{order_id}-2",
                "catalog_item_id": "cat-2",
                "slot": "A2",
                "name": "Chips",
                "unit_price": 1000,
                "quantity": 1,
                "dispensed": dispensed,
                "dispense_status": "dispensed" if dispensed else "pending",
            },
        ],
        "created_at": _now(),
        "updated_at": _now(),
        "version": version,
    }


def event(seq, type_, payload, event_id=None):
    return {
        "seq": seq,
        "event_id": event_id or uuid.uuid4().hex,
        "type": type_,
        "occurred_at": _now(),
        "payload": payload,
    }


async def _count(cloud, table, *where) -> int:
    """Rows of ``table`` (the Postgres database is shared by the session's tests: filter)."""
    query = sa.select(sa.func.count()).select_from(table)
    for clause in where:
        query = query.where(clause)
    async with cloud.engine.connect() as conn:
        return int(await conn.scalar(query) or 0)


async def test_batch_is_stored_once_and_acked(tenant, enroll, cloud):
    site = await tenant.site()
    machine = (await tenant.machine(site["id"]))["machine"]
    mid = machine["id"]
    a1 = next(i for i in machine["catalog"] if i["slot"] == "A1")
    gateway = await enroll(site["id"])
    order_id = str(uuid.uuid4())
    cmd_id = f"cmd-{uuid.uuid4().hex}"
    batch = [
        event(1, "order.snapshot", order_payload(order_id, mid, version=3)),
        event(
            2,
            "dispense.result",
            {
                "cmd_id": cmd_id,
                "machine_id": mid,
                "order_id": order_id,
                "item_id": f"{order_id}-1",
                "slot": "A1",
                "result": "ok",
                "device_ts": 1700000000,
            },
        ),
        event(
            3,
            "cash.credit",
            {
                "credit_id": uuid.uuid4().hex,
                "machine_id": mid,
                "amount": 3500,
                "currency": "INR",
                "order_id": order_id,
            },
        ),
        event(
            4,
            "inventory.changed",
            {
                "machine_id": mid,
                "catalog_item_id": a1["id"],
                "slot": "A1",
                "quantity": 4,
                "delta": -1,
                "reason": "sale",
            },
        ),
    ]
    first = await gateway.push(batch)
    assert first.status == 200, first.body
    assert first.data == {"ack_seq": 4, "accepted": 4, "duplicates": 0}
    replay = await gateway.push(batch)
    assert replay.data == {"ack_seq": 4, "accepted": 0, "duplicates": 4}
    assert await _count(cloud, t.dispense_records, t.dispense_records.c.machine_id == mid) == 1
    assert await _count(cloud, t.cash_credits, t.cash_credits.c.machine_id == mid) == 1

    # A stale snapshot (lower version) does not overwrite the newer one.
    stale = await gateway.push(
        [
            event(
                5,
                "order.snapshot",
                order_payload(order_id, mid, version=1, status="paid", dispensed=0),
            )
        ]
    )
    assert stale.data["ack_seq"] == 5 and stale.data["accepted"] == 1
    got = await tenant.admin.call("GET", f"/api/v1/orders/{order_id}")
    assert got.status == 200
    order = got.data
    assert order["status"] == "completed" and order["version"] == 3
    assert order["total_amount"] == 3500 and order["customer_name"] == "Asha"
    items = {i["slot"]: i for i in order["items"]}
    assert items["A1"]["dispenses"] == [
        {"cmd_id": cmd_id, "result": "ok", "reason": None, "device_ts": 1700000000}
    ]
    assert items["A2"]["dispenses"] == []

    # A newer one does.
    newer = await gateway.push(
        [
            event(
                6,
                "order.snapshot",
                order_payload(order_id, mid, version=4, status="refund_pending"),
            )
        ]
    )
    assert newer.status == 200
    listed = await tenant.admin.call("GET", "/api/v1/orders", params={"machine_id": mid})
    assert [(o["id"], o["status"]) for o in listed.data] == [(order_id, "refund_pending")]
    filtered = await tenant.admin.call("GET", "/api/v1/orders", params={"status": "completed"})
    assert filtered.data == []

    # Inventory from the gateway moves quantity but neither stock_rev nor the version.
    catalog = await tenant.admin.call("GET", f"/api/v1/machines/{mid}/catalog")
    a1_now = next(i for i in catalog.data if i["slot"] == "A1")
    assert a1_now["quantity"] == 4 and a1_now["stock_rev"] == a1["stock_rev"]
    detail = await tenant.admin.call("GET", f"/api/v1/machines/{mid}")
    assert detail.data["version"] == machine["version"]

    status = await tenant.admin.call("GET", f"/api/v1/machines/{mid}/status")
    assert status.data["orders_total"] == 1 and status.data["gateway_last_seen_at"]


async def test_ack_is_a_high_water_mark(tenant, enroll):
    site = await tenant.site()
    mid = (await tenant.machine(site["id"]))["machine"]["id"]
    gateway = await enroll(site["id"])
    later = await gateway.push([event(10, "order.snapshot", order_payload("o-10", mid, version=1))])
    assert later.data["ack_seq"] == 10
    # A replay of older events never moves the mark back.
    earlier = await gateway.push([event(3, "order.snapshot", order_payload("o-3", mid, version=1))])
    assert earlier.data["ack_seq"] == 10 and earlier.data["accepted"] == 1


async def test_foreign_machine_refuses_the_whole_batch(tenant, make_tenant, enroll, cloud):
    site = await tenant.site()
    mine = (await tenant.machine(site["id"]))["machine"]["id"]
    other_site = await tenant.site("Elsewhere")
    theirs = (await tenant.machine(other_site["id"], name="Far"))["machine"]["id"]
    gateway = await enroll(site["id"])
    before = await _count(cloud, t.sync_events, t.sync_events.c.gateway_id == gateway.id)
    refused = await gateway.push(
        [
            event(1, "order.snapshot", order_payload("o-ok", mine, version=1)),
            event(2, "order.snapshot", order_payload("o-bad", theirs, version=1)),
        ]
    )
    assert refused.status == 409
    assert refused.body["error"]["details"] == {"machine_ids": [theirs]}
    assert await _count(cloud, t.sync_events, t.sync_events.c.gateway_id == gateway.id) == before
    assert (await tenant.admin.call("GET", "/api/v1/orders/o-ok")).status == 404


async def test_malformed_envelope_is_400_and_a_bad_event_is_rejected_alone(tenant, enroll, cloud):
    site = await tenant.site()
    mid = (await tenant.machine(site["id"]))["machine"]["id"]
    gateway = await enroll(site["id"])
    # The envelope (a list of events with seq and event id) is still judged whole.
    assert (await gateway.push([])).status == 400
    no_seq = event(1, "order.snapshot", order_payload("o-y", mid, version=1))
    del no_seq["seq"]
    refused = await gateway.push([no_seq])
    assert refused.status == 400 and refused.error["code"] == "validation_error"

    # A bad event inside a good envelope is rejected alone: validation_error, no input echoed.
    bad_amount = order_payload("o-x", mid, version=1)
    bad_amount["total_amount"] = 35.5
    good = str(uuid.uuid4())
    batch = [
        event(1, "order.snapshot", bad_amount),
        event(2, "order.deleted", {}),
        event(3, "order.snapshot", order_payload(good, mid, version=1)),
    ]
    reply = await gateway.push(batch)
    assert reply.status == 200, reply.body
    assert reply.data["ack_seq"] == 3 and reply.data["accepted"] == 1
    rejected = reply.data["rejected"]
    assert [(r["event_id"], r["seq"], r["code"]) for r in rejected] == [
        (batch[0]["event_id"], 1, "validation_error"),
        (batch[1]["event_id"], 2, "validation_error"),
    ]
    assert "35.5" not in str(rejected)
    assert (await tenant.admin.call("GET", f"/api/v1/orders/{good}")).status == 200
    assert (await tenant.admin.call("GET", "/api/v1/orders/o-x")).status == 404
