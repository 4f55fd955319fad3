"""Money events from the gateway: refund requests, machine credit entries, slot states, order
snapshots' refund and credit amounts, and what an ended order does to its payments."""

import uuid

import sqlalchemy as sa
from money_support import (
    captured_sandbox_payment,
    channel_payloads,
    event,
    payment,
    refund_request,
    refund_row,
    rows,
    snapshot,
)

from cloud.db import schema as t


async def site_machine_gateway(tenant, enroll):
    site = await tenant.site()
    machine = (await tenant.machine(site["id"]))["machine"]
    return machine, await enroll(site["id"], tenant)


async def test_refund_request_is_recorded_once_and_sent(tenant, enroll, cloud, poll):
    machine, gateway = await site_machine_gateway(tenant, enroll)
    mid = machine["id"]
    order_id, payment_id = await captured_sandbox_payment(gateway, mid, cloud, poll)
    refund_id = f"rf-{order_id}-undispensed"
    batch = [
        event(
            1,
            "order.snapshot",
            snapshot(
                order_id,
                mid,
                version=5,
                status="failed",
                method="sandbox",
                payment_id=payment_id,
                paid=2500,
                refund_amount=2500,
            ),
        ),
        event(2, "refund.request", refund_request(refund_id, order_id, mid, payment_id, 2500)),
    ]
    first = await gateway.push(batch)
    assert first.data == {"ack_seq": 2, "accepted": 2, "duplicates": 0}, first.body
    # A replay, and the same refund id under a new event id (the gateway re-decided it after a
    # restore), store nothing new.
    assert (await gateway.push(batch)).data["duplicates"] == 2
    again = event(3, "refund.request", refund_request(refund_id, order_id, mid, payment_id, 2500))
    assert (await gateway.push([again])).data["accepted"] == 1
    assert len(await rows(cloud, t.refunds, t.refunds.c.order_id == order_id)) == 1

    row = await refund_row(cloud, refund_id)
    assert (row.source, row.reason, row.amount, row.payment_id, row.provider) == (
        "gateway",
        "undispensed",
        2500,
        payment_id,
        "sandbox",
    )
    assert (row.tenant_id, row.machine_id) == (tenant.id, mid)

    # The sandbox provider gives it back at once: refunded, and the gateway is told.
    async def refunded():
        r = await refund_row(cloud, refund_id)
        return r if r.status == "refunded" else None

    done = await poll(refunded)
    assert done.refunded_at is not None and done.provider_refund_id == f"sbx_{refund_id}"
    updates = await channel_payloads(cloud, gateway.id, "refund.update")
    assert [(u["refund_id"], u["status"]) for u in updates] == [(refund_id, "refunded")]

    order = (await tenant.admin.call("GET", f"/api/v1/orders/{order_id}")).data
    assert (order["status"], order["refund_amount"], order["credit_amount"]) == ("failed", 2500, 0)
    assert [(r["id"], r["status"], r["amount"]) for r in order["refunds"]] == [
        (refund_id, "refunded", 2500)
    ]
    listed = (await tenant.admin.call("GET", "/api/v1/orders", params={"machine_id": mid})).data
    assert listed[0]["refunds"][0]["id"] == refund_id


async def test_held_refund_waits_for_review(tenant, enroll, cloud, poll):
    machine, gateway = await site_machine_gateway(tenant, enroll)
    mid = machine["id"]
    order_id, payment_id = await captured_sandbox_payment(gateway, mid, cloud, poll)
    refund_id = f"rf-{order_id}-held"
    reply = await gateway.push(
        [
            event(
                1,
                "refund.request",
                refund_request(refund_id, order_id, mid, payment_id, 2500, hold=True),
            )
        ]
    )
    assert reply.data["accepted"] == 1, reply.body
    row = await refund_row(cloud, refund_id)
    assert (row.status, row.next_attempt_at, row.attempts) == ("manual_review", None, 0)


async def test_refund_requests_the_cloud_cannot_apply_are_dead_lettered(
    tenant, make_tenant, enroll, cloud, poll
):
    machine, gateway = await site_machine_gateway(tenant, enroll)
    mid = machine["id"]
    order_id, payment_id = await captured_sandbox_payment(gateway, mid, cloud, poll)
    # Another tenant's payment is no payment of this gateway's tenant.
    other = await make_tenant()
    other_machine, other_gateway = await site_machine_gateway(other, enroll)
    other_order, other_payment = await captured_sandbox_payment(
        other_gateway, other_machine["id"], cloud, poll
    )
    batch = [
        event(1, "refund.request", refund_request(f"rf-{order_id}-a", order_id, mid, "nope", 100)),
        event(
            2,
            "refund.request",
            refund_request(f"rf-{order_id}-b", order_id, mid, other_payment, 100),
        ),
        event(
            3,
            "refund.request",
            refund_request(f"rf-{order_id}-undispensed", order_id, mid, payment_id, 2000),
        ),
        # 2000 + 1000 is more than the 2500 paid.
        event(
            4,
            "refund.request",
            refund_request(f"rf-{order_id}-held", order_id, mid, payment_id, 1000),
        ),
        # For another order than the payment's.
        event(
            5,
            "refund.request",
            refund_request(f"rf-{other_order}-x", str(uuid.uuid4()), mid, payment_id, 100),
        ),
    ]
    reply = await gateway.push(batch)
    assert reply.status == 200, reply.body
    assert reply.data["accepted"] == 1
    assert [(r["seq"], r["code"]) for r in reply.data["rejected"]] == [
        (1, "unknown_payment"),
        (2, "unknown_payment"),
        (4, "refund_exceeds_payment"),
        (5, "payment_mismatch"),
    ]
    assert "nothing was refunded" in reply.data["rejected"][2]["message"]
    stored = await rows(cloud, t.refunds, t.refunds.c.tenant_id == tenant.id)
    assert [r.id for r in stored] == [f"rf-{order_id}-undispensed"]
    letters = await rows(cloud, t.sync_dead_letters, t.sync_dead_letters.c.gateway_id == gateway.id)
    assert sorted(letter.error_code for letter in letters) == [
        "payment_mismatch",
        "refund_exceeds_payment",
        "unknown_payment",
        "unknown_payment",
    ]


async def test_credit_entries_are_stored_once(tenant, enroll, cloud):
    machine, gateway = await site_machine_gateway(tenant, enroll)
    mid = machine["id"]
    entries = [
        {
            "entry_id": uuid.uuid4().hex,
            "machine_id": mid,
            "currency": "INR",
            "delta": 1000,
            "balance": 1000,
            "reason": "cash_in",
            "credit_id": uuid.uuid4().hex,
        },
        {
            "entry_id": uuid.uuid4().hex,
            "machine_id": mid,
            "currency": "INR",
            "delta": -1000,
            "balance": 0,
            "reason": "order_payment",
            "order_id": str(uuid.uuid4()),
        },
    ]
    batch = [event(i + 1, "credit.entry", e) for i, e in enumerate(entries)]
    assert (await gateway.push(batch)).data["accepted"] == 2
    assert (await gateway.push(batch)).data["duplicates"] == 2
    # The same entry id under a new event id is not a second move of the credit.
    assert (await gateway.push([event(3, "credit.entry", entries[0])])).data["accepted"] == 1
    stored = await rows(cloud, t.credit_entries, t.credit_entries.c.machine_id == mid)
    assert sorted((r.reason, r.delta, r.balance) for r in stored) == [
        ("cash_in", 1000, 1000),
        ("order_payment", -1000, 0),
    ]
    assert all(r.tenant_id == tenant.id and r.occurred_at is not None for r in stored)


async def test_slot_state_records_what_the_gateway_did(tenant, enroll, cloud):
    machine, gateway = await site_machine_gateway(tenant, enroll)
    mid = machine["id"]
    a1 = next(i for i in machine["catalog"] if i["slot"] == "A1")
    jammed = {
        "machine_id": mid,
        "catalog_item_id": a1["id"],
        "slot": "A1",
        "enabled": False,
        "reason": "jammed",
        "consecutive_failures": 3,
    }
    assert (await gateway.push([event(1, "slot.state", jammed)])).data["accepted"] == 1
    [item] = await rows(cloud, t.catalog_items, t.catalog_items.c.id == a1["id"])
    assert (item.enabled, item.disabled_reason, item.consecutive_failures) == (
        False,
        "jammed",
        3,
    )
    assert item.disabled_at is not None
    # Neither the operator's switch (enable_rev) nor the machine version moves: the gateway
    # must not adopt its own report back as an operator's decision.
    assert item.enable_rev == 0
    detail = await tenant.admin.call("GET", f"/api/v1/machines/{mid}")
    assert detail.data["version"] == machine["version"]

    enabled = jammed | {"enabled": True, "reason": "technician", "consecutive_failures": 0}
    assert (await gateway.push([event(2, "slot.state", enabled)])).data["accepted"] == 1
    [item] = await rows(cloud, t.catalog_items, t.catalog_items.c.id == a1["id"])
    assert (item.enabled, item.disabled_reason, item.disabled_at) == (True, None, None)


async def test_a_stale_answer_to_an_older_operator_switch_is_not_applied(tenant, enroll, cloud):
    machine, gateway = await site_machine_gateway(tenant, enroll)
    mid = machine["id"]
    a1 = next(i for i in machine["catalog"] if i["slot"] == "A1")
    async with cloud.engine.begin() as conn:
        await conn.execute(
            t.catalog_items.update()
            .where(t.catalog_items.c.id == a1["id"])
            .values(enable_rev=5, enabled=True)
        )
    stale = {
        "machine_id": mid,
        "catalog_item_id": a1["id"],
        "slot": "A1",
        "enabled": False,
        "reason": "operator",
        "enable_rev": 4,
    }
    assert (await gateway.push([event(1, "slot.state", stale)])).data["accepted"] == 1
    [item] = await rows(cloud, t.catalog_items, t.catalog_items.c.id == a1["id"])
    assert (item.enabled, item.enable_rev) == (True, 5)


async def test_an_ended_order_closes_its_qr_and_refunds_an_unserved_capture(
    tenant, enroll, cloud, poll
):
    machine, gateway = await site_machine_gateway(tenant, enroll)
    mid = machine["id"]
    # Captured, but the gateway's order was cancelled (the payment came after it gave up).
    order_id, captured_id = await captured_sandbox_payment(gateway, mid, cloud, poll)
    # A second order whose payment is still open when it is cancelled.
    open_order = str(uuid.uuid4())
    opened = await gateway.call(
        "POST",
        "/sync/v1/payments",
        {
            "order_id": open_order,
            "machine_id": mid,
            "amount": 2500,
            "currency": "INR",
            "method": "sandbox",
            "idempotency_key": f"idem-{uuid.uuid4().hex}",
        },
    )
    open_id = opened.data["payment_id"]
    # Stop the sandbox from capturing it meanwhile: this test is about the snapshot.
    async with cloud.engine.begin() as conn:
        await conn.execute(
            t.payments.update().where(t.payments.c.id == open_id).values(approve_at=None)
        )
    reply = await gateway.push(
        [
            event(
                1,
                "order.snapshot",
                snapshot(order_id, mid, version=3, status="cancelled", payment_id=captured_id),
            ),
            event(
                2,
                "order.snapshot",
                snapshot(open_order, mid, version=3, status="cancelled", payment_id=open_id),
            ),
        ]
    )
    assert reply.data["accepted"] == 2, reply.body
    # Marked for closing by the push; the closer worker (woken by the push) may already have
    # closed it: either way its QR code is on its way out, and then out.
    assert (await payment(cloud, open_id)).close_state in ("pending", "closed")

    async def qr_closed() -> bool:
        return (await payment(cloud, open_id)).close_state == "closed"

    await poll(qr_closed)
    refund_id = f"rf-{captured_id}-unserved"
    row = await refund_row(cloud, refund_id)
    assert (row.source, row.reason, row.amount, row.order_id) == (
        "cloud",
        "unserved",
        2500,
        order_id,
    )
    assert await refund_row(cloud, f"rf-{open_id}-unserved") is None
    # The gateway decides the same refund too (it got the capture for a cancelled order): one
    # refund, whichever came first.
    late = await gateway.push(
        [
            event(
                3,
                "refund.request",
                refund_request(refund_id, order_id, mid, captured_id, 2500, reason="unserved"),
            )
        ]
    )
    assert late.data["accepted"] == 1, late.body
    assert len(await rows(cloud, t.refunds, t.refunds.c.payment_id == captured_id)) == 1

    # The cloud decided it, so the gateway hears of it (pending, then refunded).
    async def told_refunded():
        updates = await channel_payloads(cloud, gateway.id, "refund.update")
        return [u["status"] for u in updates if u["refund_id"] == refund_id] == [
            "pending",
            "refunded",
        ]

    await poll(told_refunded)
    count = await cloud_count(cloud, refund_id)
    assert count == 1


async def cloud_count(cloud, refund_id):
    async with cloud.engine.connect() as conn:
        return await conn.scalar(
            sa.select(sa.func.count()).select_from(t.refunds).where(t.refunds.c.id == refund_id)
        )
