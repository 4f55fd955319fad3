"""The cloud judges each pushed event alone: one it cannot accept or apply goes to its dead
letters (listed and retried per tenant), the rest of the batch is stored, the mark moves on."""

import json
import uuid

import pytest
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict
from test_sync_dedupe import dispense
from test_sync_push import _count, event, order_payload

from cloud.db import schema as t
from cloud.db import sealed
from cloud.sync.dead_letters import opened_text
from contracts.sealing import KeyRing
from contracts.sync import PushAck

DEAD_LETTERS = "/api/v1/sync/dead-letters"


async def _site(tenant, enroll):
    site = await tenant.site()
    mid = (await tenant.machine(site["id"]))["machine"]["id"]
    return await enroll(site["id"]), mid


async def _letters(client, **params):
    reply = await client.call("GET", DEAD_LETTERS, params=params or None)
    assert reply.status == 200, reply.body
    return reply.data


async def test_a_nul_event_is_dead_lettered_and_the_rest_of_the_batch_is_stored(
    tenant, enroll, cloud
):
    """Attack 3 at the cloud: one order with a NUL in the customer's name used to make the whole
    batch a 400, so nothing behind it ever synced."""
    gateway, mid = await _site(tenant, enroll)
    before, bad, after = (str(uuid.uuid4()) for _ in range(3))
    eve = order_payload(bad, mid, version=1)
    eve["customer_name"] = "Eve\u0000"
    eve["customer_phone"] = "+919876543210"
    batch = [
        event(1, "order.snapshot", order_payload(before, mid, version=1)),
        event(2, "order.snapshot", eve),
        event(
            3,
            "cash.credit",
            {"credit_id": uuid.uuid4().hex, "machine_id": mid, "amount": 500, "currency": "INR"},
        ),
        event(4, "order.snapshot", order_payload(after, mid, version=1)),
    ]
    reply = await gateway.push(batch)
    assert reply.status == 200, reply.body
    assert reply.data["ack_seq"] == 4 and reply.data["accepted"] == 3
    assert reply.data["rejected"] == [
        {
            "event_id": batch[1]["event_id"],
            "seq": 2,
            "code": "validation_error",
            "message": "the event contains a NUL character",
        }
    ]
    for order_id in (before, after):
        assert (await tenant.admin.call("GET", f"/api/v1/orders/{order_id}")).status == 200
    assert (await tenant.admin.call("GET", f"/api/v1/orders/{bad}")).status == 404
    assert await _count(cloud, t.sync_events, t.sync_events.c.gateway_id == gateway.id) == 3

    [letter] = await _letters(tenant.admin)
    assert letter["event_id"] == batch[1]["event_id"]
    assert (letter["gateway_id"], letter["site_id"]) == (gateway.id, gateway.site_id)
    assert (letter["state"], letter["attempts"], letter["type"]) == ("open", 1, "order.snapshot")
    assert letter["error_code"] == "validation_error"
    # Stored escaped, so PostgreSQL holds it too, and exactly as received.
    assert "\x00" not in letter["payload"] and not letter["payload_truncated"]
    assert json.loads(letter["payload"])["payload"]["customer_name"] == "Eve\u0000"
    assert json.loads(letter["payload"])["payload"]["customer_phone"] == "+919876543210"
    # At rest the phone number is sealed, like everywhere else.
    async with cloud.engine.connect() as conn:
        kept = await conn.scalar(
            sa.select(t.sync_dead_letters.c.payload).where(t.sync_dead_letters.c.id == letter["id"])
        )
    assert "9876543210" not in kept and "Eve" in kept

    # The same event sent again is one more attempt on the same letter, still not stored.
    again = await gateway.push([batch[1]])
    assert again.data["rejected"][0]["event_id"] == batch[1]["event_id"]
    [letter] = await _letters(tenant.admin)
    assert letter["attempts"] == 2


async def test_a_fixed_event_resent_by_the_gateway_resolves_its_letter(tenant, enroll, cloud):
    gateway, mid = await _site(tenant, enroll)
    order_id = str(uuid.uuid4())
    broken = order_payload(order_id, mid, version=1)
    broken["customer_name"] = "Eve\u0000"
    first = event(1, "order.snapshot", broken)
    assert (await gateway.push([first])).data["rejected"]
    fixed = dict(first, seq=7, payload=order_payload(order_id, mid, version=1))
    reply = await gateway.push([fixed])
    assert reply.data == {"ack_seq": 7, "accepted": 1, "duplicates": 0}
    assert await _letters(tenant.admin) == []
    [resolved] = await _letters(tenant.admin, state="resolved")
    assert resolved["state"] == "resolved" and resolved["resolved_at"] is not None
    # Resolved is final: a retry is refused, and nothing is applied twice.
    retry = await tenant.admin.call("POST", f"{DEAD_LETTERS}/{resolved['id']}/retry")
    assert retry.status == 409 and retry.error["code"] == "dead_letter_not_retryable"
    assert await _count(cloud, t.orders, t.orders.c.id == order_id) == 1


async def test_retry_reapplies_once_after_the_cause_is_fixed(tenant, enroll, cloud):
    gateway, mid = await _site(tenant, enroll)
    order_id = str(uuid.uuid4())
    broken = order_payload(order_id, mid, version=1)
    broken["total_amount"] = 35.5
    pushed = event(1, "order.snapshot", broken)
    assert (await gateway.push([pushed])).data["rejected"][0]["code"] == "validation_error"
    [letter] = await _letters(tenant.admin)

    # Not fixed yet: refused again, one attempt more, the letter stays open.
    still = await tenant.admin.call("POST", f"{DEAD_LETTERS}/{letter['id']}/retry")
    assert still.status == 409, still.body
    assert still.error["code"] == "dead_letter_still_failing"
    assert still.error["details"]["code"] == "validation_error"
    [letter] = await _letters(tenant.admin)
    assert letter["attempts"] == 2

    # An operator repairs the stored event (the amount the gateway meant), then retries.
    repaired = json.loads(letter["payload"])
    repaired["payload"]["total_amount"] = 3500
    async with cloud.engine.begin() as conn:
        await conn.execute(
            t.sync_dead_letters.update()
            .where(t.sync_dead_letters.c.id == letter["id"])
            .values(payload=json.dumps(repaired))
        )
    done = await tenant.admin.call("POST", f"{DEAD_LETTERS}/{letter['id']}/retry")
    assert done.status == 200, done.body
    assert done.data["state"] == "resolved"
    assert await _letters(tenant.admin) == []
    assert (await tenant.admin.call("GET", f"/api/v1/orders/{order_id}")).status == 200

    # Exactly once: a second retry is refused; the gateway's own resend is a duplicate.
    again = await tenant.admin.call("POST", f"{DEAD_LETTERS}/{letter['id']}/retry")
    assert again.status == 409
    resend = await gateway.push([dict(pushed, seq=2, payload=repaired["payload"])])
    assert resend.data["duplicates"] == 1 and resend.data["accepted"] == 0
    assert await _count(cloud, t.sync_events, t.sync_events.c.event_id == pushed["event_id"]) == 1


async def test_dead_letters_are_tenant_scoped_and_not_for_viewers(tenant, make_tenant, enroll):
    gateway, mid = await _site(tenant, enroll)
    broken = order_payload(str(uuid.uuid4()), mid, version=1)
    broken["customer_name"] = "Eve\u0000"
    assert (await gateway.push([event(1, "order.snapshot", broken)])).data["rejected"]
    [letter] = await _letters(tenant.admin)

    other = await make_tenant()
    assert await _letters(other.admin, state="all") == []
    for path in (f"{DEAD_LETTERS}/{letter['id']}/retry",):
        reply = await other.admin.call("POST", path)
        assert reply.status == 404, reply.body
        assert reply.error["code"] == "not_found"
    viewer = await tenant.user("viewer")
    assert (await viewer.call("GET", DEAD_LETTERS)).status == 403
    assert (await viewer.call("POST", f"{DEAD_LETTERS}/{letter['id']}/retry")).status == 403
    operator = await tenant.user("operator")
    assert [x["id"] for x in await _letters(operator)] == [letter["id"]]
    # Still open for its own tenant: the other tenant's attempt changed nothing.
    [unchanged] = await _letters(tenant.admin)
    assert unchanged["attempts"] == 1 and unchanged["state"] == "open"


async def test_the_stored_payload_is_bounded(tenant, enroll):
    gateway, mid = await _site(tenant, enroll)
    huge = order_payload(str(uuid.uuid4()), mid, version=1)
    huge["customer_name"] = "x" * 100_000  # not a valid name: rejected, and clipped when kept
    reply = await gateway.push([event(1, "order.snapshot", huge)])
    assert reply.data["rejected"][0]["code"] == "validation_error"
    [letter] = await _letters(tenant.admin)
    assert letter["payload_truncated"] is True and len(letter["payload"]) <= 16_384
    retry = await tenant.admin.call("POST", f"{DEAD_LETTERS}/{letter['id']}/retry")
    assert retry.status == 409 and retry.error["code"] == "dead_letter_not_retryable"


@pytest.mark.postgres
async def test_an_event_postgres_cannot_store_is_dead_lettered_alone(tenant, enroll, cloud):
    """Valid by the contract but refused by the database (a slot longer than the column): the
    savepoint undoes only that event."""
    if cloud.engine.dialect.name != "postgresql":
        pytest.skip("SQLite does not enforce column lengths")
    gateway, mid = await _site(tenant, enroll)
    order_id = str(uuid.uuid4())
    long_slot = dispense(f"cmd-{uuid.uuid4().hex}", mid, order_id)
    long_slot["slot"] = "A1-" + "9" * 20
    batch = [
        event(1, "dispense.result", long_slot),
        event(2, "order.snapshot", order_payload(order_id, mid, version=1)),
    ]
    reply = await gateway.push(batch)
    assert reply.status == 200, reply.body
    assert [r["code"] for r in reply.data["rejected"]] == ["not_storable"]
    assert reply.data["accepted"] == 1 and reply.data["ack_seq"] == 2
    [letter] = await _letters(tenant.admin)
    assert letter["error_code"] == "not_storable"
    still = await tenant.admin.call("POST", f"{DEAD_LETTERS}/{letter['id']}/retry")
    assert still.status == 409 and still.error["details"]["code"] == "not_storable"


async def test_rekey_reseals_the_phone_numbers_kept_in_dead_letters(
    tenant, enroll, cloud, settings
):
    gateway, mid = await _site(tenant, enroll)
    broken = order_payload(str(uuid.uuid4()), mid, version=1)
    broken |= {"customer_name": "Eve\u0000", "customer_phone": "+919876543210"}
    pushed = event(1, "order.snapshot", broken)
    assert (await gateway.push([pushed])).data["rejected"]

    old = settings.key_ring()
    new = KeyRing.parse(KeyRing.generate_text("rotated"))
    await sealed.rekey(
        sealed.with_keys(cloud.engine, KeyRing(new.active, {**new.keys, **old.keys}))
    )
    try:
        async with cloud.engine.connect() as conn:
            kept = await conn.scalar(
                sa.select(t.sync_dead_letters.c.payload).where(
                    t.sync_dead_letters.c.event_id == pushed["event_id"]
                )
            )
    finally:
        # The PostgreSQL database is shared by the session's tests: back to their key.
        await sealed.rekey(
            sealed.with_keys(cloud.engine, KeyRing(old.active, {**old.keys, **new.keys}))
        )
    assert json.loads(kept)["payload"]["customer_phone"].startswith("v1.rotated.")
    # The new key alone opens it: the old one may go.
    async with sealed.with_keys(cloud.engine, new).connect() as conn:
        opened = opened_text(conn, gateway.id, pushed["event_id"], kept)
    assert json.loads(opened)["payload"]["customer_phone"] == "+919876543210"


class _AckBeforeDeadLetters(BaseModel):
    """``PushAck`` as gateways from before dead letters parse it (unknown fields refused)."""

    model_config = ConfigDict(extra="forbid")
    ack_seq: int
    accepted: int
    duplicates: int


async def test_an_ack_with_nothing_rejected_keeps_the_shape_older_gateways_know(tenant, enroll):
    gateway, mid = await _site(tenant, enroll)
    reply = await gateway.push([event(1, "order.snapshot", order_payload("o-1", mid, version=1))])
    assert _AckBeforeDeadLetters.model_validate(reply.data).accepted == 1
    assert PushAck.model_validate(reply.data).rejected == []
