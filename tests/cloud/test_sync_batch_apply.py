"""The bulk apply of a pushed batch (one transaction, set-based reads and writes): each event
stored once across replays, overlapping and concurrent pushes; a bad event dead-lettered alone;
money events once; the same rows as applying the events one by one."""

import asyncio
import uuid
from typing import Any

import sqlalchemy as sa
from money_support import captured_sandbox_payment, refund_request, refund_row, rows, snapshot
from test_sync_push import _count, event

from cloud.db import schema as t
from cloud.db import sealed
from cloud.sync.events import store_batch
from cloud.sync.identity import Gateway
from contracts.sync import MAX_BATCH


async def _site(tenant, enroll, name="Main site"):
    site = await tenant.site(name)
    machine = (await tenant.machine(site["id"]))["machine"]
    return await enroll(site["id"]), machine


def _sales(machine: dict[str, Any], n: int, prefix: str | None = None) -> list[dict[str, Any]]:
    """``n`` events, six per cash sale (as the gateway pushes a sale), seq from 1. With
    ``prefix``, every id is derived from it (two runs of the same batch compare row by row)."""
    mid = machine["id"]
    catalog = machine["catalog"]
    out: list[dict[str, Any]] = []
    sale = 0
    while len(out) < n:
        item = catalog[sale % len(catalog)]
        tag = f"{prefix}-{sale}" if prefix else uuid.uuid4().hex
        order_id, credit_id = f"o-{tag}", f"c-{tag}"
        sale += 1

        def order(version, status, dispensed, order_id=order_id, item=item):
            body = snapshot(order_id, mid, version=version, status=status, method="cash")
            body["paid_amount"] = body["total_amount"]
            body["items"][0] |= {
                "catalog_item_id": item["id"],
                "slot": item["slot"],
                "dispensed": dispensed,
                "dispense_status": "dispensed" if dispensed else "pending",
            }
            if prefix:
                body["created_at"] = body["updated_at"] = "2026-11-29T10:00:00+00:00"
            return body

        cmd = {
            "cmd_id": f"cmd-{tag}",
            "machine_id": mid,
            "order_id": order_id,
            "item_id": f"{order_id}-1",
            "slot": item["slot"],
            "result": "unknown" if sale % 5 == 0 else "ok",
            "reason": "no_result" if sale % 5 == 0 else None,
            "device_ts": 1_700_000_000 + sale,
        }
        batch = [
            ("order.snapshot", order(1, "paid", 0)),
            (
                "cash.credit",
                {
                    "credit_id": credit_id,
                    "machine_id": mid,
                    "amount": 2500,
                    "currency": "INR",
                    "order_id": order_id,
                },
            ),
            (
                "credit.entry",
                {
                    "entry_id": f"e-{tag}",
                    "machine_id": mid,
                    "currency": "INR",
                    "delta": 2500,
                    "balance": 2500,
                    "reason": "cash_in",
                    "credit_id": credit_id,
                },
            ),
            ("dispense.result", cmd),
            (
                "inventory.changed",
                {
                    "machine_id": mid,
                    "catalog_item_id": item["id"],
                    "slot": item["slot"],
                    "quantity": 1000 - sale,
                    "delta": -1,
                    "reason": "sale",
                },
            ),
            ("order.snapshot", order(2, "completed", 1)),
        ]
        if sale % 5 == 0:  # the gateway's late correction of a timed-out dispense
            batch.append(("dispense.result", cmd | {"result": "ok", "reason": None}))
        for type_, payload in batch:
            event_id = f"ev-{tag}-{len(out)}" if prefix else None
            out.append(event(len(out) + 1, type_, payload, event_id))
    return out[:n]


def _expected(batch: list[dict[str, Any]]) -> dict[str, int]:
    """The rows a batch makes: one per order, command, cash credit and credit entry."""
    keys = {
        "order.snapshot": ("orders", "id"),
        "dispense.result": ("dispense", "cmd_id"),
        "cash.credit": ("credits", "credit_id"),
        "credit.entry": ("entries", "entry_id"),
    }
    seen: dict[str, set[str]] = {name: set() for name, _ in keys.values()}
    for e in batch:
        if e["type"] in keys:
            name, key = keys[e["type"]]
            seen[name].add(e["payload"][key])
    return {name: len(ids) for name, ids in seen.items()}


async def _stored(cloud, mid: str) -> dict[str, int]:
    return {
        "orders": await _count(cloud, t.orders, t.orders.c.machine_id == mid),
        "dispense": await _count(cloud, t.dispense_records, t.dispense_records.c.machine_id == mid),
        "credits": await _count(cloud, t.cash_credits, t.cash_credits.c.machine_id == mid),
        "entries": await _count(cloud, t.credit_entries, t.credit_entries.c.machine_id == mid),
    }


async def _events_of(cloud, gateway_id: str) -> int:
    return await _count(cloud, t.sync_events, t.sync_events.c.gateway_id == gateway_id)


async def test_a_full_batch_is_applied_once(tenant, enroll, cloud):
    gateway, machine = await _site(tenant, enroll)
    batch = _sales(machine, MAX_BATCH)
    first = await gateway.push(batch)
    assert first.status == 200, first.body
    assert first.data == {"ack_seq": MAX_BATCH, "accepted": MAX_BATCH, "duplicates": 0}
    expected = await _stored(cloud, machine["id"])
    assert expected == _expected(batch)
    assert await _events_of(cloud, gateway.id) == MAX_BATCH

    replay = await gateway.push(batch)
    assert replay.data == {"ack_seq": MAX_BATCH, "accepted": 0, "duplicates": MAX_BATCH}
    assert await _stored(cloud, machine["id"]) == expected
    assert await _events_of(cloud, gateway.id) == MAX_BATCH

    # Every order ended at its last version with its items; the last count of each slot stands.
    async with cloud.engine.connect() as conn:
        versions = (
            await conn.execute(
                sa.select(t.orders.c.version, t.orders.c.status, sa.func.count())
                .where(t.orders.c.machine_id == machine["id"])
                .group_by(t.orders.c.version, t.orders.c.status)
            )
        ).all()
        stock = dict(
            (
                await conn.execute(
                    sa.select(t.catalog_items.c.id, t.catalog_items.c.quantity).where(
                        t.catalog_items.c.machine_id == machine["id"]
                    )
                )
            ).all()
        )
        corrected = await conn.scalar(
            sa.select(sa.func.count())
            .select_from(t.dispense_records)
            .where(
                t.dispense_records.c.machine_id == machine["id"],
                t.dispense_records.c.result == "unknown",
            )
        )
    final = {e["payload"]["id"]: e["payload"] for e in batch if e["type"] == "order.snapshot"}
    counted: dict[tuple, int] = {}
    for o in final.values():
        counted[(o["version"], o["status"])] = counted.get((o["version"], o["status"]), 0) + 1
    assert {(v, s): n for v, s, n in versions} == counted
    last = {}
    for e in batch:
        if e["type"] == "inventory.changed":
            last[e["payload"]["catalog_item_id"]] = e["payload"]["quantity"]
    assert {k: stock[k] for k in last} == last
    assert corrected == 0  # every timed-out dispense was corrected by its late result


async def test_overlapping_batches_store_each_event_once(tenant, enroll, cloud):
    gateway, machine = await _site(tenant, enroll)
    events = _sales(machine, 450)
    first = await gateway.push(events[:300])
    assert first.data == {"ack_seq": 300, "accepted": 300, "duplicates": 0}
    second = await gateway.push(events[200:])
    assert second.data == {"ack_seq": 450, "accepted": 150, "duplicates": 100}
    assert await _stored(cloud, machine["id"]) == _expected(events)
    assert await _events_of(cloud, gateway.id) == 450


async def test_concurrent_pushes_of_the_same_batch_store_it_once(tenant, enroll, cloud):
    """Two connections of one gateway push the same batch at once (a retry racing a slow
    answer): one stores it, the other finds it stored."""
    gateway, machine = await _site(tenant, enroll)
    batch = _sales(machine, 300)
    replies = await asyncio.gather(*(gateway.push(batch) for _ in range(3)))
    assert [r.status for r in replies] == [200, 200, 200], [r.body for r in replies]
    assert sorted(r.data["accepted"] for r in replies) == [0, 0, 300]
    assert all(r.data["ack_seq"] == 300 for r in replies)
    assert await _stored(cloud, machine["id"]) == _expected(batch)
    assert await _events_of(cloud, gateway.id) == 300


async def test_an_event_that_fails_to_apply_is_dead_lettered_alone(
    tenant, enroll, cloud, monkeypatch
):
    """A bug in applying one event fails the bulk apply; the batch then runs event by event and
    only that event goes to the dead letters."""
    gateway, machine = await _site(tenant, enroll)
    batch = _sales(machine, 120)
    bad = next(
        e for e in batch[60:] if e["type"] == "order.snapshot" and e["payload"]["version"] == 1
    )
    bad_order = bad["payload"]["id"]
    [later] = [e for e in batch if e["payload"].get("id") == bad_order and e is not bad]
    real = sealed.seal_phone

    def broken(conn, order_id, phone):
        if order_id == bad_order:
            raise RuntimeError("a bug")
        return real(conn, order_id, phone)

    monkeypatch.setattr(sealed, "seal_phone", broken)
    reply = await gateway.push(batch)
    assert reply.status == 200, reply.body
    # Both snapshots of that order fail; everything else is stored and the mark passes them.
    assert [(r["seq"], r["code"]) for r in reply.data["rejected"]] == [
        (bad["seq"], "apply_failed"),
        (later["seq"], "apply_failed"),
    ]
    assert reply.data["accepted"] == 118 and reply.data["ack_seq"] == 120
    assert await _events_of(cloud, gateway.id) == 118
    assert await _count(cloud, t.orders, t.orders.c.id == bad_order) == 0
    letters = await rows(cloud, t.sync_dead_letters, t.sync_dead_letters.c.gateway_id == gateway.id)
    assert sorted(r.event_id for r in letters) == sorted([bad["event_id"], later["event_id"]])

    # Fixed: the gateway's resend stores the two, resolves the letters, and nothing twice.
    monkeypatch.setattr(sealed, "seal_phone", real)
    again = await gateway.push(batch)
    assert again.data["accepted"] == 2 and again.data["duplicates"] == 118
    assert await _count(cloud, t.orders, t.orders.c.id == bad_order) == 1
    letters = await rows(cloud, t.sync_dead_letters, t.sync_dead_letters.c.gateway_id == gateway.id)
    assert {r.state for r in letters} == {"resolved"}


async def test_money_events_in_a_large_batch_are_recorded_once(tenant, enroll, cloud, poll):
    gateway, machine = await _site(tenant, enroll)
    mid = machine["id"]
    order_id, payment_id = await captured_sandbox_payment(gateway, mid, cloud, poll)
    refund_id = f"rf-{order_id}-undispensed"
    failed = snapshot(
        order_id,
        mid,
        version=5,
        status="failed",
        method="sandbox",
        payment_id=payment_id,
        paid=2500,
        refund_amount=2500,
    )
    sales = _sales(machine, 300)
    batch = [
        *sales[:150],
        event(151, "order.snapshot", failed),
        event(152, "refund.request", refund_request(refund_id, order_id, mid, payment_id, 2500)),
        *(dict(e, seq=e["seq"] + 2) for e in sales[150:]),
    ]
    first = await gateway.push(batch)
    assert first.data == {"ack_seq": 302, "accepted": 302, "duplicates": 0}, first.body
    assert (await gateway.push(batch)).data["duplicates"] == 302
    # The same refund under a new event id is no second refund.
    again = event(303, "refund.request", refund_request(refund_id, order_id, mid, payment_id, 2500))
    assert (await gateway.push([again])).data["accepted"] == 1
    assert len(await rows(cloud, t.refunds, t.refunds.c.order_id == order_id)) == 1
    assert (await refund_row(cloud, refund_id)).amount == 2500
    n = sum(1 for e in sales if e["type"] == "credit.entry")
    assert (await _stored(cloud, mid))["entries"] == n
    # The same credit entries under new event ids move no credit twice.
    entries = [e for e in sales if e["type"] == "credit.entry"]
    resent = [event(400 + i, "credit.entry", e["payload"]) for i, e in enumerate(entries)]
    assert (await gateway.push(resent)).data["accepted"] == len(resent)
    assert (await _stored(cloud, mid))["entries"] == n


# Who and when differ between the two sites (and each machine has its own catalog item ids).
_VOLATILE = {
    "synced_at",
    "received_at",
    "tenant_id",
    "site_id",
    "machine_id",
    "gateway_id",
    "catalog_item_id",
    "occurred_at",
}


async def _snapshot_rows(cloud, mid: str, prefix: str) -> dict[str, list[tuple]]:
    def clean(row: Any) -> tuple:
        return tuple(
            str(v).replace(prefix, "P") if isinstance(v, str) else v
            for k, v in sorted(row._mapping.items())
            if k not in _VOLATILE
        )

    out: dict[str, list[tuple]] = {}
    async with cloud.engine.connect() as conn:
        for table, where in (
            (t.orders, t.orders.c.machine_id == mid),
            (t.order_items, t.order_items.c.order_id.like(f"o-{prefix}-%")),
            (t.dispense_records, t.dispense_records.c.machine_id == mid),
            (t.cash_credits, t.cash_credits.c.machine_id == mid),
            (t.credit_entries, t.credit_entries.c.machine_id == mid),
        ):
            out[table.name] = sorted(
                clean(r) for r in await conn.execute(sa.select(table).where(where))
            )
        out["stock"] = sorted(
            (r.slot, r.quantity)
            for r in await conn.execute(
                sa.select(t.catalog_items.c.slot, t.catalog_items.c.quantity).where(
                    t.catalog_items.c.machine_id == mid
                )
            )
        )
    return out


async def test_bulk_and_per_event_apply_store_the_same_rows(tenant, enroll, cloud):
    """The same mixed batch (with replays inside it) applied in bulk at one site and event by
    event at another: the same acks and the same rows."""
    results = []
    for bulk in (True, False):
        client, machine = await _site(tenant, enroll, f"bulk={bulk}")
        prefix = uuid.uuid4().hex[:12]
        batch = _sales(machine, 240, prefix)
        batch = [*batch[:200], *batch[150:170], *batch[200:]]  # the gateway resent a part
        for seq, e in enumerate(batch, start=1):
            e["seq"] = seq
        gateway = Gateway(id=client.id, tenant_id=tenant.id, site_id=client.site_id)
        acks = [
            await store_batch(cloud.engine, gateway, {"events": batch[:130]}, bulk=bulk),
            await store_batch(cloud.engine, gateway, {"events": batch[100:]}, bulk=bulk),
        ]
        results.append(
            (
                [a.model_dump() for a in acks],
                await _snapshot_rows(cloud, machine["id"], prefix),
                await _events_of(cloud, client.id),
            )
        )
    bulk_result, plain_result = results
    assert bulk_result[0] == plain_result[0]
    assert bulk_result[2] == plain_result[2] == 240
    assert bulk_result[1].keys() == plain_result[1].keys()
    for name in bulk_result[1]:
        assert bulk_result[1][name] == plain_result[1][name], name
