"""Refunds: the worker sends them through the tenant's provider (the local Razorpay test server)
with the refund id as idempotency key, retries provider errors with backoff, hands the hopeless
ones to operators, and operators retry or resolve them (audit-logged, tenant-scoped)."""

from pathlib import Path

import pytest
from money_support import (
    audit_rows,
    captured_sandbox_payment,
    channel_payloads,
    event,
    payment,
    payment_entity,
    post_webhook,
    provider_id,
    refund_request,
    refund_row,
    snapshot,
    webhook_body,
)
from razorpay_fixtures import razorpay_server, razorpay_settings, upi_payment_body, upi_tenant

__all__ = ["razorpay_server", "upi_tenant"]

MAX_ATTEMPTS = 3


@pytest.fixture(name="settings")
def _settings(db_url, tmp_path: Path, razorpay_server):
    return razorpay_settings(
        db_url,
        tmp_path / "cloud-data",
        razorpay_server.url,
        refund_max_attempts=MAX_ATTEMPTS,
        refund_backoff_base_s=0.05,
        refund_backoff_max_s=0.2,
        refund_check_interval_s=0.2,
        # These tests fail the provider on purpose; the breaker is not what they are about.
        provider_breaker_threshold=20,
    )


class Site:
    def __init__(self, tenant, gateway, machine_id):
        self.tenant, self.gateway, self.machine_id = tenant, gateway, machine_id
        self.seq = 0

    async def push(self, type_, payload):
        self.seq += 1
        reply = await self.gateway.push([event(self.seq, type_, payload)])
        assert reply.status == 200 and reply.data["accepted"] == 1, reply.body
        return reply

    async def request_refund(self, order_id, payment_id, amount, *, hold=False, suffix=None):
        refund_id = f"rf-{order_id}-{suffix or ('held' if hold else 'undispensed')}"
        await self.push(
            "refund.request",
            refund_request(refund_id, order_id, self.machine_id, payment_id, amount, hold=hold),
        )
        return refund_id


async def new_site(tenant, enroll):
    site = await tenant.site()
    mid = (await tenant.machine(site["id"]))["machine"]["id"]
    return Site(tenant, await enroll(site["id"], tenant), mid)


async def paid_upi(site, razorpay_server, cloud, poll, amount=2500):
    """A UPI payment the customer paid at the test server, captured through its webhook."""
    body = upi_payment_body(site.machine_id, amount=amount)
    reply = await site.gateway.call("POST", "/sync/v1/payments", body)
    assert reply.status == 201, reply.body
    intent = reply.data
    paid = razorpay_server.pay(intent["provider_ref"])

    async def captured():
        return (await payment(cloud, intent["payment_id"])).status == "captured"

    await poll(captured)
    return body["order_id"], intent["payment_id"], paid["id"]


async def paid_sandbox(site, cloud, poll, amount=2500):
    return await captured_sandbox_payment(site.gateway, site.machine_id, cloud, poll, amount)


async def reaches(cloud, poll, refund_id, status):
    async def probe():
        row = await refund_row(cloud, refund_id)
        return row if row is not None and row.status == status else None

    return await poll(probe)


def at_provider(server, pay_id):
    return [r for r in server.state["refunds"] if r["payment_id"] == pay_id]


async def statuses_told(cloud, gateway, refund_id):
    updates = await channel_payloads(cloud, gateway.id, "refund.update")
    return [u["status"] for u in updates if u["refund_id"] == refund_id]


async def test_provider_errors_then_success_make_one_refund(
    tenant, enroll, upi_tenant, razorpay_server, cloud, poll
):
    await upi_tenant()
    site = await new_site(tenant, enroll)
    order_id, payment_id, pay_id = await paid_upi(site, razorpay_server, cloud, poll)
    # First try: the provider is down (nothing made). Second: it makes the refund but the
    # answer is lost (a 500 after the work). Third: the same idempotency key gets that refund.
    razorpay_server.set_faults("refund_create", "error_503", count=1)
    razorpay_server.set_faults("refund_create", "error_500", count=1, when="after")
    refund_id = await site.request_refund(order_id, payment_id, 1000)

    done = await reaches(cloud, poll, refund_id, "refunded")
    [made] = at_provider(razorpay_server, pay_id)
    assert (made["amount"], made["status"], made["id"]) == (
        1000,
        "processed",
        done.provider_refund_id,
    )
    assert made["notes"]["refund_id"] == refund_id
    assert (done.attempts, done.provider_payment_id, done.source) == (2, pay_id, "gateway")
    # The lost answer and Razorpay's refund.processed webhook race: the gateway may hear
    # "failed" for the second try before or never (the webhook won). Either way it hears the
    # first failure first and "refunded" last, once.
    told = await statuses_told(cloud, site.gateway, refund_id)
    assert told[0] == "failed" and told[-1] == "refunded" and told.count("refunded") == 1, told
    assert (await payment(cloud, payment_id)).status == "captured"


async def test_exhausted_retries_wait_for_an_operator_who_retries(
    tenant, enroll, upi_tenant, razorpay_server, cloud, poll
):
    await upi_tenant()
    site = await new_site(tenant, enroll)
    order_id, payment_id, pay_id = await paid_upi(site, razorpay_server, cloud, poll)
    razorpay_server.set_faults("refund_create", "error_502")
    refund_id = await site.request_refund(order_id, payment_id, 2500)

    review = await reaches(cloud, poll, refund_id, "manual_review")
    assert (review.attempts, review.next_attempt_at) == (MAX_ATTEMPTS, None)
    assert "provider_unavailable" in review.last_error
    assert at_provider(razorpay_server, pay_id) == []
    assert await statuses_told(cloud, site.gateway, refund_id) == ["failed", "manual_review"]

    razorpay_server.clear_faults()
    operator = await tenant.user("operator")
    reply = await operator.call("POST", f"/api/v1/refunds/{refund_id}/retry")
    assert reply.status == 200, reply.body
    assert (reply.data["status"], reply.data["attempts"], reply.data["last_error"]) == (
        "pending",
        0,
        None,
    )
    await reaches(cloud, poll, refund_id, "refunded")
    assert len(at_provider(razorpay_server, pay_id)) == 1
    [audit] = await audit_rows(cloud, tenant.id, refund_id)
    assert (audit.action, audit.target_type) == ("refund.retry", "refund")
    assert audit.user_id is not None and "manual_review" in audit.note
    again = await operator.call("POST", f"/api/v1/refunds/{refund_id}/retry")
    assert (again.status, again.error["code"]) == (409, "refund_not_retryable")


async def test_a_refusal_goes_to_review_at_once(tenant, enroll, upi_tenant, cloud, http, poll):
    account = await upi_tenant()
    site = await new_site(tenant, enroll)
    body = upi_payment_body(site.machine_id)
    intent = (await site.gateway.call("POST", "/sync/v1/payments", body)).data
    # Captured through a (correctly signed) webhook for a payment the provider does not have:
    # the refund call is refused (4xx), and asking again would get the same answer.
    ghost = provider_id("pay_")
    notes = {"payment_id": intent["payment_id"]}
    captured = webhook_body("payment.captured", payment=payment_entity(ghost, 2500, notes=notes))
    status, _ = await post_webhook(http, cloud, tenant.id, captured, secret=account.webhook_secret)
    assert status == 200
    refund_id = await site.request_refund(body["order_id"], intent["payment_id"], 2500)
    review = await reaches(cloud, poll, refund_id, "manual_review")
    assert review.attempts == 1 and "refused" in review.last_error


async def test_refund_checked_at_the_provider_when_its_webhooks_are_lost(
    tenant, enroll, upi_tenant, razorpay_server, cloud, poll
):
    await upi_tenant()
    site = await new_site(tenant, enroll)
    order_id, payment_id, pay_id = await paid_upi(site, razorpay_server, cloud, poll)
    razorpay_server.set_webhook_mode(drop=True)
    refund_id = await site.request_refund(order_id, payment_id, 2500)
    done = await reaches(cloud, poll, refund_id, "refunded")
    assert done.attempts == 0
    assert not razorpay_server.delivered("refund.processed")
    assert len(at_provider(razorpay_server, pay_id)) == 1


async def test_refunds_the_provider_fails_end_in_review(
    tenant, enroll, upi_tenant, razorpay_server, cloud, poll
):
    await upi_tenant()
    site = await new_site(tenant, enroll)
    order_id, payment_id, _ = await paid_upi(site, razorpay_server, cloud, poll)
    razorpay_server.set_webhook_mode(fail_refunds=True)
    refund_id = await site.request_refund(order_id, payment_id, 2500)
    review = await reaches(cloud, poll, refund_id, "manual_review")
    assert "failed" in review.last_error and review.provider_refund_id is not None


async def test_operators_resolve_refunds_by_hand(tenant, enroll, cloud, poll):
    site = await new_site(tenant, enroll)
    order_id, payment_id = await paid_sandbox(site, cloud, poll)
    await site.push(
        "order.snapshot",
        snapshot(
            order_id,
            site.machine_id,
            version=6,
            status="failed",
            method="sandbox",
            payment_id=payment_id,
            paid=2500,
            refund_amount=2500,
        ),
    )
    held = await site.request_refund(order_id, payment_id, 1000, hold=True)
    other = await site.request_refund(order_id, payment_id, 1500, hold=True, suffix="held2")
    viewer = await tenant.user("viewer")
    operator = await tenant.user("operator")

    listed = await viewer.call("GET", "/api/v1/refunds", params={"order_id": order_id})
    assert sorted(r["id"] for r in listed.data) == sorted([held, other])
    assert {r["status"] for r in listed.data} == {"manual_review"}
    forbidden = await viewer.call(
        "POST", f"/api/v1/refunds/{held}/resolve", {"outcome": "not_owed", "note": "came out"}
    )
    assert forbidden.status == 403

    for bad in ({"outcome": "not_owed", "note": "  "}, {"outcome": "maybe", "note": "hmm hmm"}, {}):
        reply = await operator.call("POST", f"/api/v1/refunds/{held}/resolve", bad)
        assert reply.status == 400, (bad, reply.body)

    note = "camera shows the can came out; nothing owed"
    voided = await operator.call(
        "POST", f"/api/v1/refunds/{held}/resolve", {"outcome": "not_owed", "note": note}
    )
    assert voided.status == 200, voided.body
    assert (voided.data["status"], voided.data["note"]) == ("voided", note)
    assert voided.data["resolved_by"] is not None and voided.data["refunded_at"] is None
    again = await operator.call(
        "POST", f"/api/v1/refunds/{held}/resolve", {"outcome": "not_owed", "note": note}
    )
    assert (again.status, again.error["code"]) == (409, "refund_not_resolvable")
    retry = await operator.call("POST", f"/api/v1/refunds/{held}/retry")
    assert (retry.status, retry.error["code"]) == (409, "refund_not_retryable")

    paid_back = await tenant.admin.call(
        "POST",
        f"/api/v1/refunds/{other}/resolve",
        {"outcome": "refunded_outside", "note": "paid back in cash by the site manager"},
    )
    assert paid_back.status == 200, paid_back.body
    assert paid_back.data["status"] == "refunded" and paid_back.data["refunded_at"] is not None

    [audit] = await audit_rows(cloud, tenant.id, held)
    assert audit.action == "refund.resolve.not_owed" and note in audit.note
    [audit] = await audit_rows(cloud, tenant.id, other)
    assert audit.action == "refund.resolve.refunded_outside" and "1500 paise" in audit.note
    assert await statuses_told(cloud, site.gateway, held) == ["voided"]
    assert await statuses_told(cloud, site.gateway, other) == ["refunded"]

    voided_only = await viewer.call("GET", "/api/v1/refunds", params={"status": "voided"})
    assert [r["id"] for r in voided_only.data] == [held]
    one = await viewer.call("GET", f"/api/v1/refunds/{other}")
    assert one.data["status"] == "refunded" and one.data["order_id"] == order_id
    order = (await viewer.call("GET", f"/api/v1/orders/{order_id}")).data
    assert sorted((r["id"], r["status"]) for r in order["refunds"]) == sorted(
        [(held, "voided"), (other, "refunded")]
    )


async def test_another_tenant_cannot_see_or_touch_refunds(tenant, make_tenant, enroll, cloud, poll):
    site = await new_site(tenant, enroll)
    order_id, payment_id = await paid_sandbox(site, cloud, poll)
    held = await site.request_refund(order_id, payment_id, 2500, hold=True)
    stranger = await make_tenant()
    admin = stranger.admin

    assert (await admin.call("GET", "/api/v1/refunds")).data == []
    assert (await admin.call("GET", "/api/v1/refunds", params={"order_id": order_id})).data == []
    assert (await admin.call("GET", f"/api/v1/refunds/{held}")).status == 404
    assert (await admin.call("POST", f"/api/v1/refunds/{held}/retry")).status == 404
    resolve = await admin.call(
        "POST", f"/api/v1/refunds/{held}/resolve", {"outcome": "not_owed", "note": "not mine"}
    )
    assert resolve.status == 404
    assert (await admin.call("GET", f"/api/v1/orders/{order_id}")).status == 404
    row = await refund_row(cloud, held)
    assert (row.status, row.resolved_by, row.attempts) == ("manual_review", None, 0)
    assert await audit_rows(cloud, tenant.id, held) == []
    assert await audit_rows(cloud, stranger.id, held) == []
