"""Dedupe is per sender: an id stored for another gateway or machine is a conflict, never a
silent duplicate; a timed-out dispense may be corrected once by the gateway's late result."""

import uuid

import sqlalchemy as sa
from test_sync_push import _count, event, order_payload

from cloud.db import schema as t


def dispense(cmd_id, mid, order_id, result="ok", reason=None):
    return {
        "cmd_id": cmd_id,
        "machine_id": mid,
        "order_id": order_id,
        "item_id": f"{order_id}-1",
        "slot": "A1",
        "result": result,
        "reason": reason,
    }


def credit(credit_id, mid, order_id=None):
    return {
        "credit_id": credit_id,
        "machine_id": mid,
        "amount": 1000,
        "currency": "INR",
        "order_id": order_id,
    }


async def _two_gateways(tenant, enroll):
    site_a, site_b = await tenant.site("A"), await tenant.site("B")
    mid_a = (await tenant.machine(site_a["id"], name="MA"))["machine"]["id"]
    mid_b = (await tenant.machine(site_b["id"], name="MB"))["machine"]["id"]
    return (await enroll(site_a["id"]), mid_a), (await enroll(site_b["id"]), mid_b)


async def test_event_id_of_another_gateway_is_a_conflict(tenant, enroll, cloud):
    (gw_a, mid_a), (gw_b, mid_b) = await _two_gateways(tenant, enroll)
    shared = uuid.uuid4().hex
    first = await gw_a.push(
        [event(1, "order.snapshot", order_payload("o-" + shared, mid_a, version=1), shared)]
    )
    assert first.status == 200, first.body

    own = str(uuid.uuid4())
    clash = await gw_b.push(
        [
            event(1, "order.snapshot", order_payload(own, mid_b, version=1)),
            event(2, "order.snapshot", order_payload(str(uuid.uuid4()), mid_b, version=1), shared),
        ]
    )
    assert clash.status == 409, clash.body
    assert clash.error["code"] == "event_id_conflict"
    assert clash.error["details"] == {"event_ids": [shared]}
    # Nothing of the refused batch is stored.
    assert await _count(cloud, t.sync_events, t.sync_events.c.gateway_id == gw_b.id) == 0
    assert (await tenant.admin.call("GET", f"/api/v1/orders/{own}")).status == 404

    # The same gateway replaying it is still a plain duplicate.
    replay = await gw_a.push(
        [event(1, "order.snapshot", order_payload("o-" + shared, mid_a, version=1), shared)]
    )
    assert replay.data == {"ack_seq": 1, "accepted": 0, "duplicates": 1}


async def test_cmd_and_credit_ids_of_another_machine_are_conflicts(tenant, enroll, cloud):
    (gw_a, mid_a), (gw_b, mid_b) = await _two_gateways(tenant, enroll)
    cmd_id, credit_id = f"cmd-{uuid.uuid4().hex}", uuid.uuid4().hex
    stored = await gw_a.push(
        [
            event(1, "dispense.result", dispense(cmd_id, mid_a, str(uuid.uuid4()))),
            event(2, "cash.credit", credit(credit_id, mid_a)),
        ]
    )
    assert stored.data["accepted"] == 2, stored.body

    for type_, payload, key in (
        ("dispense.result", dispense(cmd_id, mid_b, str(uuid.uuid4())), "cmd_id"),
        ("cash.credit", credit(credit_id, mid_b), "credit_id"),
    ):
        reply = await gw_b.push([event(1, type_, payload)])
        assert reply.status == 409, reply.body
        assert reply.error["code"] == "event_id_conflict"
        assert reply.error["details"] == {key: payload[key]}
    assert await _count(cloud, t.sync_events, t.sync_events.c.gateway_id == gw_b.id) == 0
    async with cloud.engine.connect() as conn:
        owner = await conn.scalar(
            sa.select(t.dispense_records.c.machine_id).where(t.dispense_records.c.cmd_id == cmd_id)
        )
    assert owner == mid_a


async def test_order_of_another_site_is_a_conflict(tenant, enroll, cloud):
    (gw_a, mid_a), (gw_b, mid_b) = await _two_gateways(tenant, enroll)
    order_a = str(uuid.uuid4())
    assert (
        await gw_a.push([event(1, "order.snapshot", order_payload(order_a, mid_a, version=1))])
    ).status == 200

    for type_, payload in (
        ("dispense.result", dispense(f"cmd-{uuid.uuid4().hex}", mid_b, order_a)),
        ("cash.credit", credit(uuid.uuid4().hex, mid_b, order_a)),
    ):
        reply = await gw_b.push([event(1, type_, payload)])
        assert reply.status == 409, reply.body
        assert reply.error["details"] == {"order_id": order_a}
    assert await _count(cloud, t.sync_events, t.sync_events.c.gateway_id == gw_b.id) == 0

    # The own site's order, pushed in the same batch or known, is fine; unknown orders too.
    order_b = str(uuid.uuid4())
    fine = await gw_b.push(
        [
            event(1, "order.snapshot", order_payload(order_b, mid_b, version=1)),
            event(2, "dispense.result", dispense(f"cmd-{uuid.uuid4().hex}", mid_b, order_b)),
            event(3, "cash.credit", credit(uuid.uuid4().hex, mid_b, order_b)),
            event(4, "cash.credit", credit(uuid.uuid4().hex, mid_b, str(uuid.uuid4()))),
        ]
    )
    assert fine.status == 200 and fine.data["accepted"] == 4, fine.body


async def _dispense_row(cloud, cmd_id):
    async with cloud.engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(t.dispense_records.c.result, t.dispense_records.c.reason).where(
                    t.dispense_records.c.cmd_id == cmd_id
                )
            )
        ).first()
    return tuple(row) if row else None


async def test_late_result_corrects_a_timed_out_dispense_only(tenant, enroll, cloud):
    (gw_a, mid_a), _ = await _two_gateways(tenant, enroll)
    order_id = str(uuid.uuid4())
    timed_out, settled = f"cmd-{uuid.uuid4().hex}", f"cmd-{uuid.uuid4().hex}"
    first = await gw_a.push(
        [
            event(1, "order.snapshot", order_payload(order_id, mid_a, version=1)),
            event(
                2,
                "dispense.result",
                dispense(timed_out, mid_a, order_id, "unknown", "no_result"),
                timed_out,
            ),
            event(
                3, "dispense.result", dispense(settled, mid_a, order_id, "failed", "jam"), settled
            ),
        ]
    )
    assert first.data["accepted"] == 3, first.body
    late = await gw_a.push(
        [
            event(
                4,
                "dispense.result",
                dispense(timed_out, mid_a, order_id, "ok"),
                f"{timed_out}-late",
            ),
            event(
                5, "dispense.result", dispense(settled, mid_a, order_id, "ok"), f"{settled}-late"
            ),
        ]
    )
    assert late.status == 200 and late.data["accepted"] == 2, late.body
    assert await _dispense_row(cloud, timed_out) == ("ok", None)
    # Only unknown/no_result is ever rewritten.
    assert await _dispense_row(cloud, settled) == ("failed", "jam")
    # A further (replayed or stray) result does not move the corrected one.
    again = await gw_a.push(
        [
            event(
                6,
                "dispense.result",
                dispense(timed_out, mid_a, order_id, "failed", "jam"),
                f"{timed_out}-x",
            )
        ]
    )
    assert again.status == 200
    assert await _dispense_row(cloud, timed_out) == ("ok", None)
