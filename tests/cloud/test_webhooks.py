"""Razorpay webhooks at the cloud: signatures, dedupe, order of arrival, and what each payment
does to ours. Bodies are signed here as Razorpay signs them (exact cases), or sent by the local
Razorpay test server after a "customer" pays a QR code (the whole path)."""

import asyncio
import json
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from money_support import (
    channel_payloads,
    event,
    payment,
    payment_entity,
    post_webhook,
    provider_id,
    qr_entity,
    refund_entity,
    refund_request,
    refund_row,
    rows,
    sign,
    snapshot,
    webhook_body,
)
from razorpay_fixtures import razorpay_server, razorpay_settings, upi_payment_body, upi_tenant

from cloud.db import schema as t

__all__ = ["razorpay_server", "upi_tenant"]


@pytest.fixture(name="settings")
def _settings(db_url, tmp_path: Path, razorpay_server):
    return razorpay_settings(
        db_url,
        tmp_path / "cloud-data",
        razorpay_server.url,
        refund_backoff_base_s=0.05,
        refund_backoff_max_s=0.2,
        refund_check_interval_s=0.2,
    )


async def upi_payment(tenant, enroll, upi_tenant, amount=2500):
    """The tenant's Razorpay account, a machine with its gateway, and a UPI payment (a QR code)
    for a new order."""
    account = await upi_tenant()
    site = await tenant.site()
    mid = (await tenant.machine(site["id"]))["machine"]["id"]
    gateway = await enroll(site["id"])
    body = upi_payment_body(mid, amount=amount)
    reply = await gateway.call("POST", "/sync/v1/payments", body)
    assert reply.status == 201, reply.body
    return account, gateway, mid, body["order_id"], reply.data


def credited(intent, pay_id, amount=None, qr_status="closed"):
    notes = {"order_id": intent["order_id"], "payment_id": intent["payment_id"]}
    amount = amount or intent["amount"]
    return webhook_body(
        "qr_code.credited",
        payment=payment_entity(pay_id, amount, notes=notes),
        qr_code=qr_entity(intent["provider_ref"], intent["amount"], notes, status=qr_status),
    )


async def test_bad_signatures_are_refused_and_change_nothing(
    tenant, make_tenant, enroll, upi_tenant, cloud, http
):
    account, gateway, _, _, intent = await upi_payment(tenant, enroll, upi_tenant)
    body = credited(intent, provider_id("pay_"))
    other = await make_tenant()  # a tenant without a provider
    tampered = body.replace(b'"amount": 2500', b'"amount": 2600')
    assert tampered != body
    attempts = [
        (tenant.id, None),  # no signature
        (tenant.id, "not-hex"),
        (tenant.id, "0" * 64),
        (tenant.id, "é" * 64),  # not even ASCII
        (other.id, None),
        (str(uuid.uuid4()), None),
        ("no-such-tenant", None),
    ]
    good = sign(account.webhook_secret, body)
    # Signed with the tenant's secret but sent for another tenant (that tenant's secret counts),
    # and the signature of another body.
    attempts += [(other.id, good), (tenant.id, sign(account.webhook_secret, tampered) + "0")]
    answers = []
    for tenant_id, signature in attempts:
        status, reply = await post_webhook(
            http, cloud, tenant_id, body, secret=None, signature=signature, event_id="evt_1"
        )
        answers.append((status, reply["error"]["code"], reply["error"]["message"]))
    status, reply = await post_webhook(
        http, cloud, tenant.id, tampered, secret=None, signature=good, event_id="evt_1"
    )
    answers.append((status, reply["error"]["code"], reply["error"]["message"]))
    # Every refusal is the same answer, so tenant ids cannot be probed.
    assert set(answers) == {
        (400, "invalid_signature", "the webhook signature is missing or does not verify")
    }
    assert await rows(cloud, t.provider_events, t.provider_events.c.tenant_id == tenant.id) == []
    assert (
        await rows(cloud, t.provider_payments, t.provider_payments.c.tenant_id == tenant.id) == []
    )
    assert (await payment(cloud, intent["payment_id"])).status == "created"
    assert await channel_payloads(cloud, gateway.id, "payment.update") == []

    status, reply = await post_webhook(http, cloud, tenant.id, body, secret=account.webhook_secret)
    assert status == 200 and reply["data"]["outcome"] == "captured", reply


async def test_the_same_event_five_times_is_applied_once(tenant, enroll, upi_tenant, cloud, http):
    account, gateway, mid, order_id, intent = await upi_payment(tenant, enroll, upi_tenant)
    pay_id = provider_id("pay_")
    body = credited(intent, pay_id)
    evt = provider_id("evt_")

    async def deliver():
        return await post_webhook(
            http, cloud, tenant.id, body, secret=account.webhook_secret, event_id=evt
        )

    answers = [await deliver(), await deliver()]
    # Three more at the same time: they race on the event's key.
    answers += await asyncio.gather(deliver(), deliver(), deliver())
    assert all(status == 200 for status, _ in answers), answers
    outcomes = sorted(reply["data"]["outcome"] for _, reply in answers)
    assert outcomes == ["captured", "duplicate", "duplicate", "duplicate", "duplicate"]

    paid = await payment(cloud, intent["payment_id"])
    assert (paid.status, paid.provider_payment_id) == ("captured", pay_id)
    updates = await channel_payloads(cloud, gateway.id, "payment.update")
    assert len(updates) == 1
    assert updates[0] | {} == {
        "payment_id": intent["payment_id"],
        "order_id": order_id,
        "machine_id": mid,
        "status": "captured",
        "amount": 2500,
        "currency": "INR",
        "provider": "razorpay",
        "provider_payment_id": pay_id,
    }
    [recorded] = await rows(cloud, t.provider_events, t.provider_events.c.id == evt)
    assert (recorded.event_type, recorded.outcome, recorded.entity_id) == (
        "qr_code.credited",
        "captured",
        pay_id,
    )
    stored = json.loads(recorded.payload)
    # Amounts and ids are kept; who paid is not.
    entity = stored["payload"]["payment"]["entity"]
    assert entity["amount"] == 2500 and entity["id"] == pay_id
    assert not {"vpa", "email", "contact"} & set(entity)
    [provider_payment] = await rows(cloud, t.provider_payments, t.provider_payments.c.id == pay_id)
    assert (
        provider_payment.payment_id,
        provider_payment.order_id,
        provider_payment.qr_code_id,
        provider_payment.status,
        provider_payment.source,
    ) == (intent["payment_id"], order_id, intent["provider_ref"], "captured", "webhook")

    # Without an event id header, the body's hash is the key: still once.
    again = [
        await post_webhook(http, cloud, tenant.id, body, secret=account.webhook_secret)
        for _ in range(2)
    ]
    assert [reply["data"]["outcome"] for _, reply in again] == ["already_captured", "duplicate"]
    assert len(await channel_payloads(cloud, gateway.id, "payment.update")) == 1


async def test_payment_captured_before_qr_code_credited(tenant, enroll, upi_tenant, cloud, http):
    account, gateway, _, _, intent = await upi_payment(tenant, enroll, upi_tenant)
    pay_id = provider_id("pay_")
    notes = {"order_id": intent["order_id"], "payment_id": intent["payment_id"]}
    captured = webhook_body("payment.captured", payment=payment_entity(pay_id, 2500, notes=notes))
    secret = account.webhook_secret
    first = await post_webhook(http, cloud, tenant.id, captured, secret=secret, event_id="evt_a1")
    assert first[1]["data"]["outcome"] == "captured"
    [row] = await rows(cloud, t.provider_payments, t.provider_payments.c.id == pay_id)
    assert row.qr_code_id is None  # a payment entity does not name its QR code
    second = await post_webhook(
        http, cloud, tenant.id, credited(intent, pay_id), secret=secret, event_id="evt_a2"
    )
    assert second[1]["data"]["outcome"] == "already_captured"
    [row] = await rows(cloud, t.provider_payments, t.provider_payments.c.id == pay_id)
    assert row.qr_code_id == intent["provider_ref"]
    assert len(await channel_payloads(cloud, gateway.id, "payment.update")) == 1
    # A failed payment event for it later (out of order, or a bank's second word) changes
    # nothing: what was captured stays captured.
    failed = webhook_body(
        "payment.failed", payment=payment_entity(pay_id, 2500, notes=notes, status="failed")
    )
    third = await post_webhook(http, cloud, tenant.id, failed, secret=secret, event_id="evt_a3")
    assert third[1]["data"]["outcome"] == "recorded"
    [row] = await rows(cloud, t.provider_payments, t.provider_payments.c.id == pay_id)
    assert row.status == "captured"
    assert (await payment(cloud, intent["payment_id"])).status == "captured"


async def test_refund_events_in_any_order_only_move_forward(
    tenant, enroll, upi_tenant, cloud, http
):
    account, gateway, mid, order_id, intent = await upi_payment(tenant, enroll, upi_tenant)
    secret = account.webhook_secret
    pay_id = provider_id("pay_")
    await post_webhook(http, cloud, tenant.id, credited(intent, pay_id), secret=secret)
    # Held (unknown outcome, review policy): the worker leaves it, so only webhooks move it.
    refund_id = f"rf-{order_id}-held"
    pushed = await gateway.push(
        [
            event(
                1,
                "refund.request",
                refund_request(refund_id, order_id, mid, intent["payment_id"], 2500, hold=True),
            )
        ]
    )
    assert pushed.data["accepted"] == 1, pushed.body
    rfnd = provider_id("rfnd_")

    async def send(name, status, evt):
        body = webhook_body(
            name,
            refund=refund_entity(rfnd, pay_id, 2500, status, notes={"refund_id": refund_id}),
            payment=payment_entity(pay_id, 2500, status="refunded") | {"amount_refunded": 2500},
        )
        return (await post_webhook(http, cloud, tenant.id, body, secret=secret, event_id=evt))[1]

    # processed before created (and before our own call would have stored the rfnd id).
    assert (await send("refund.processed", "processed", "evt_r1"))["data"]["outcome"] == (
        "refund_updated"
    )
    row = await refund_row(cloud, refund_id)
    assert (row.status, row.provider_refund_id) == ("refunded", rfnd)
    assert row.refunded_at is not None
    assert (await send("refund.created", "pending", "evt_r2"))["data"]["outcome"] == (
        "refund_unchanged"
    )
    assert (await send("refund.failed", "failed", "evt_r3"))["data"]["outcome"] == (
        "refund_unchanged"
    )
    assert (await send("refund.processed", "processed", "evt_r1"))["data"]["duplicate"] is True
    row = await refund_row(cloud, refund_id)
    assert (row.status, row.provider_refund_id) == ("refunded", rfnd)
    updates = await channel_payloads(cloud, gateway.id, "refund.update")
    assert [(u["refund_id"], u["status"], u["provider_refund_id"]) for u in updates] == [
        (refund_id, "refunded", rfnd)
    ]
    [pp] = await rows(cloud, t.provider_payments, t.provider_payments.c.id == pay_id)
    assert (pp.amount_refunded, pp.status) == (2500, "refunded")


async def test_events_for_nothing_of_ours(tenant, enroll, upi_tenant, cloud, http):
    account, _, _, _, intent = await upi_payment(tenant, enroll, upi_tenant)
    secret = account.webhook_secret
    # A payment into the merchant account for other business: recorded, never refunded.
    stranger = provider_id("pay_")
    body = webhook_body("payment.captured", payment=payment_entity(stranger, 9900))
    status, reply = await post_webhook(http, cloud, tenant.id, body, secret=secret)
    assert (status, reply["data"]["outcome"]) == (200, "unmatched")
    [row] = await rows(cloud, t.provider_payments, t.provider_payments.c.id == stranger)
    assert (row.payment_id, row.amount, row.status) == (None, 9900, "captured")
    assert await rows(cloud, t.refunds, t.refunds.c.tenant_id == tenant.id) == []
    # An event we do not use: stored, answered 200 so Razorpay stops sending it.
    other = webhook_body("order.paid", order={"id": "order_" + "x" * 14})
    status, reply = await post_webhook(http, cloud, tenant.id, other, secret=secret)
    assert (status, reply["data"]["outcome"]) == (200, "ignored")
    # A refund made in the dashboard: nothing of ours to move.
    dashboard = webhook_body(
        "refund.processed",
        refund=refund_entity(provider_id("rfnd_"), stranger, 9900, "processed"),
    )
    status, reply = await post_webhook(http, cloud, tenant.id, dashboard, secret=secret)
    assert (status, reply["data"]["outcome"]) == (200, "unmatched")
    # A signed body that is not an event at all.
    status, reply = await post_webhook(http, cloud, tenant.id, b"[1, 2", secret=secret)
    assert (status, reply["data"]["outcome"]) == (200, "malformed")
    # The QR code closed (paid or expired): our payment's close_state follows.
    closed = webhook_body(
        "qr_code.closed", qr_code=qr_entity(intent["provider_ref"], 2500, {}, status="closed")
    )
    status, reply = await post_webhook(http, cloud, tenant.id, closed, secret=secret)
    assert (status, reply["data"]["outcome"]) == (200, "closed")
    assert (await payment(cloud, intent["payment_id"])).close_state == "closed"
    outcomes = {
        r.event_type: r.outcome
        for r in await rows(cloud, t.provider_events, t.provider_events.c.tenant_id == tenant.id)
    }
    assert outcomes == {
        "payment.captured": "unmatched",
        "order.paid": "ignored",
        "refund.processed": "unmatched",
        "unknown": "malformed",
        "qr_code.closed": "closed",
    }


async def test_a_body_over_the_cap_is_refused_unread(tenant, enroll, upi_tenant, cloud, http):
    account, *_ = await upi_payment(tenant, enroll, upi_tenant)
    body = b'{"event": "payment.captured", "pad": "' + b"x" * (256 * 1024) + b'"}'
    status, reply = await post_webhook(http, cloud, tenant.id, body, secret=account.webhook_secret)
    assert (status, reply["error"]["code"]) == (413, "payload_too_large")
    assert await rows(cloud, t.provider_events, t.provider_events.c.tenant_id == tenant.id) == []


# --- through the local Razorpay test server ---------------------------------------------------


def server_refunds(server, pay_id):
    return [r for r in server.state["refunds"] if r["payment_id"] == pay_id]


async def refunded(cloud, poll, refund_id):
    async def done():
        row = await refund_row(cloud, refund_id)
        return row if row is not None and row.status == "refunded" else None

    return await poll(done)


async def test_late_payment_on_a_cancelled_order_is_refunded_once(
    tenant, enroll, upi_tenant, razorpay_server, cloud, poll
):
    _, gateway, mid, order_id, intent = await upi_payment(tenant, enroll, upi_tenant)
    payment_id, qr_id = intent["payment_id"], intent["provider_ref"]
    # The order expires at the gateway: its QR code is closed at the provider.
    pushed = await gateway.push(
        [
            event(
                1,
                "order.snapshot",
                snapshot(order_id, mid, version=2, status="cancelled", payment_id=payment_id),
            )
        ]
    )
    assert pushed.data["accepted"] == 1, pushed.body

    async def closed():
        return (await payment(cloud, payment_id)).close_state == "closed"

    await poll(closed)
    # The customer's UPI app paid it anyway (a payment in flight as it closed).
    paid = razorpay_server.pay(qr_id, allow_closed=True)
    refund_id = f"rf-{payment_id}-unserved"
    done = await refunded(cloud, poll, refund_id)
    assert (done.source, done.reason, done.amount, done.provider_payment_id) == (
        "cloud",
        "unserved",
        2500,
        paid["id"],
    )
    # The order stays cancelled; the payment is recorded as captured (the money did come in).
    assert (await payment(cloud, payment_id)).status == "captured"
    order = (await tenant.admin.call("GET", f"/api/v1/orders/{order_id}")).data
    assert order["status"] == "cancelled"
    assert [(r["id"], r["status"]) for r in order["refunds"]] == [(refund_id, "refunded")]
    # The gateway, told of the capture, decides the same refund: still one.
    late = await gateway.push(
        [
            event(
                2,
                "refund.request",
                refund_request(refund_id, order_id, mid, payment_id, 2500, reason="unserved"),
            )
        ]
    )
    assert late.data["accepted"] == 1, late.body
    assert [r.id for r in await rows(cloud, t.refunds, t.refunds.c.order_id == order_id)] == [
        refund_id
    ]
    [at_provider] = server_refunds(razorpay_server, paid["id"])
    assert (at_provider["amount"], at_provider["status"]) == (2500, "processed")
    assert at_provider["notes"]["refund_id"] == refund_id
    updates = await channel_payloads(cloud, gateway.id, "refund.update")
    assert [u["status"] for u in updates if u["refund_id"] == refund_id] == [
        "pending",
        "refunded",
    ]


async def test_a_second_payment_for_a_paid_qr_code_is_refunded(
    tenant, enroll, upi_tenant, razorpay_server, cloud, poll
):
    _, gateway, _, order_id, intent = await upi_payment(tenant, enroll, upi_tenant)
    payment_id, qr_id = intent["payment_id"], intent["provider_ref"]
    first = razorpay_server.pay(qr_id)

    async def captured():
        return (await payment(cloud, payment_id)).provider_payment_id == first["id"]

    await poll(captured)
    second = razorpay_server.pay(qr_id, allow_closed=True)
    refund_id = f"rf-{second['id']}-duplicate"
    done = await refunded(cloud, poll, refund_id)
    assert (done.reason, done.amount, done.payment_id, done.order_id) == (
        "duplicate",
        2500,
        payment_id,
        order_id,
    )
    # Ours stays paid by the first one, which is not refunded.
    assert (await payment(cloud, payment_id)).provider_payment_id == first["id"]
    assert server_refunds(razorpay_server, first["id"]) == []
    assert len(server_refunds(razorpay_server, second["id"])) == 1
    assert len(await channel_payloads(cloud, gateway.id, "payment.update")) == 1


async def test_a_wrong_amount_is_not_served_and_is_refunded(
    tenant, enroll, upi_tenant, razorpay_server, cloud, poll
):
    _, gateway, _, _, intent = await upi_payment(tenant, enroll, upi_tenant)
    paid = razorpay_server.pay(intent["provider_ref"], amount=2000, allow_amount_mismatch=True)
    refund_id = f"rf-{paid['id']}-mismatch"
    done = await refunded(cloud, poll, refund_id)
    assert (done.reason, done.amount) == ("unmatched", 2000)
    ours = await payment(cloud, intent["payment_id"])
    assert (ours.status, ours.provider_payment_id) == ("created", None)
    assert "refunded" in ours.failure_reason
    assert await channel_payloads(cloud, gateway.id, "payment.update") == []


async def test_duplicate_and_reordered_server_webhooks(
    tenant, enroll, upi_tenant, razorpay_server, cloud, poll
):
    _, gateway, _, _, intent = await upi_payment(tenant, enroll, upi_tenant)
    razorpay_server.set_webhook_mode(duplicate=3, concurrent=True, reverse=True)
    paid = razorpay_server.pay(intent["provider_ref"])
    await razorpay_server.wait_until(
        lambda: (
            len(razorpay_server.delivered()) >= 2
            and not any(d.state == "pending" for d in razorpay_server.deliveries)
        )
    )
    ours = await payment(cloud, intent["payment_id"])
    assert (ours.status, ours.provider_payment_id) == ("captured", paid["id"])
    assert len(await channel_payloads(cloud, gateway.id, "payment.update")) == 1
    events = await rows(cloud, t.provider_events, t.provider_events.c.tenant_id == tenant.id)
    delivered = {d.event_id for d in razorpay_server.deliveries}
    assert {e.id for e in events} == delivered
    assert sorted(e.outcome for e in events if e.event_type != "qr_code.closed") == [
        "already_captured",
        "captured",
    ]
    assert await rows(cloud, t.refunds, t.refunds.c.tenant_id == tenant.id) == []
    async with cloud.engine.connect() as conn:
        count = await conn.scalar(
            sa.select(sa.func.count())
            .select_from(t.provider_payments)
            .where(t.provider_payments.c.tenant_id == tenant.id)
        )
    assert count == 1


async def test_a_tenants_webhook_cannot_touch_another_tenants_payment(
    tenant, make_tenant, enroll, upi_tenant, cloud, http
):
    _, _, _, _, theirs = await upi_payment(tenant, enroll, upi_tenant)
    stranger = await make_tenant()
    account = await upi_tenant(stranger)
    # Correctly signed by the stranger's account, naming the first tenant's payment and QR code.
    body = credited(theirs, provider_id("pay_"))
    status, reply = await post_webhook(
        http, cloud, stranger.id, body, secret=account.webhook_secret
    )
    assert (status, reply["data"]["outcome"]) == (200, "unmatched")
    untouched = await payment(cloud, theirs["payment_id"])
    assert (untouched.status, untouched.provider_payment_id) == ("created", None)
    assert await rows(cloud, t.refunds, t.refunds.c.payment_id == theirs["payment_id"]) == []
    [recorded] = await rows(
        cloud, t.provider_payments, t.provider_payments.c.tenant_id == stranger.id
    )
    assert recorded.payment_id is None
