"""UPI payments through the tenant's Razorpay account (the local test server): the QR code the
gateway gets, idempotent replays, the provider's circuit breaker, closing QR codes of orders
that ended unpaid, and polling when webhooks are lost."""

import json
import time

import pytest
import sqlalchemy as sa
from razorpay_fixtures import (
    payment_row,
    razorpay_cloud_settings,
    razorpay_server,
    upi_payment_body,
    upi_tenant,
)

from cloud.db import schema as t
from contracts.sync import PaymentIntent

__all__ = ["razorpay_cloud_settings", "razorpay_server", "upi_tenant"]


async def machine_and_gateway(tenant, enroll):
    site = await tenant.site()
    mid = (await tenant.machine(site["id"]))["machine"]["id"]
    return mid, await enroll(site["id"])


def qr_on_server(server, qr_id):
    [qr] = [q for q in server.state["qr_codes"] if q["id"] == qr_id]
    return qr


async def test_upi_payment_opens_a_qr_code(
    tenant, enroll, upi_tenant, razorpay_server, settings, cloud
):
    account = await upi_tenant()
    mid, gateway = await machine_and_gateway(tenant, enroll)
    body = upi_payment_body(mid, amount=3505)
    before = int(time.time())

    reply = await gateway.call("POST", "/sync/v1/payments", body)
    assert reply.status == 201, reply.body
    intent = PaymentIntent.model_validate(reply.data)
    assert (intent.provider, intent.status, intent.amount) == ("razorpay", "created", 3505)
    assert intent.provider_ref is not None and intent.provider_ref.startswith("qr_")

    qr = qr_on_server(razorpay_server, intent.provider_ref)
    assert qr["key_id"] == account.key_id
    assert (qr["type"], qr["usage"], qr["fixed_amount"]) == ("upi_qr", "single_use", True)
    assert qr["payment_amount"] == 3505 and qr["status"] == "active"
    assert qr["notes"] == {
        "order_id": body["order_id"],
        "payment_id": intent.payment_id,
        "machine_id": mid,
    }
    # The order's expiry (payment_expiry_s), never less than Razorpay's two minutes.
    expected = before + max(settings.payment_expiry_s, 125)
    assert expected - 1 <= qr["close_by"] <= expected + 5
    assert intent.qr_payload == qr["image_content"] and intent.qr_payload.startswith("upi://")
    assert intent.image_url == qr["image_url"]

    # A replay (the gateway lost the answer) gets the same payment, and no second QR code.
    again = await gateway.call("POST", "/sync/v1/payments", body)
    assert again.status == 201 and again.data == reply.data
    assert len(razorpay_server.state["qr_codes"]) == 1
    clash = await gateway.call("POST", "/sync/v1/payments", body | {"amount": 100})
    assert clash.status == 409
    sandbox = await gateway.call("POST", "/sync/v1/payments", body | {"method": "sandbox"})
    assert sandbox.status == 409
    row = await payment_row(cloud, intent.payment_id)
    assert (row.provider, row.provider_ref, row.qr_payload) == (
        "razorpay",
        qr["id"],
        qr["image_content"],
    )


async def test_close_by_follows_the_gateways_order_timeout(
    tenant, enroll, upi_tenant, razorpay_server, cloud
):
    """The QR code closes when the gateway expires the order (pay_within_s), not at the cloud's
    longer limit: nobody can pay for an order the gateway has already given up on."""
    await upi_tenant()
    mid, gateway = await machine_and_gateway(tenant, enroll)
    assert cloud.settings.payment_expiry_s > 300
    before = int(time.time())
    body = upi_payment_body(mid) | {"pay_within_s": 300}
    reply = await gateway.call("POST", "/sync/v1/payments", body)
    assert reply.status == 201, reply.body
    qr = qr_on_server(razorpay_server, reply.data["provider_ref"])
    assert before + 299 <= qr["close_by"] <= before + 305


async def test_close_by_is_at_least_two_minutes_ahead(
    tenant, enroll, upi_tenant, razorpay_server, cloud
):
    cloud.settings.payment_expiry_s = 30  # an order timeout shorter than Razorpay allows
    await upi_tenant()
    mid, gateway = await machine_and_gateway(tenant, enroll)
    before = int(time.time())
    reply = await gateway.call("POST", "/sync/v1/payments", upi_payment_body(mid))
    assert reply.status == 201, reply.body
    qr = qr_on_server(razorpay_server, reply.data["provider_ref"])
    assert before + 125 <= qr["close_by"] <= before + 130
    row = await payment_row(cloud, reply.data["payment_id"])
    assert row.provider == "razorpay" and row.provider_ref == qr["id"]
    assert row.tenant_id == tenant.id and row.status == "created"


async def test_upi_without_a_provider_is_refused(tenant, enroll):
    mid, gateway = await machine_and_gateway(tenant, enroll)
    reply = await gateway.call("POST", "/sync/v1/payments", upi_payment_body(mid))
    assert reply.status == 409
    assert reply.error["code"] == "provider_not_configured"
    # The sandbox is unaffected.
    sandbox = await gateway.call(
        "POST", "/sync/v1/payments", upi_payment_body(mid) | {"method": "sandbox"}
    )
    assert sandbox.status == 201 and sandbox.data["provider"] == "sandbox"


async def test_provider_refusal_is_not_an_outage(
    tenant, enroll, upi_tenant, razorpay_server, cloud
):
    await upi_tenant()
    mid, gateway = await machine_and_gateway(tenant, enroll)
    # The test server's accounts are its own: a key it does not know gets Razorpay's 401.
    async with cloud.engine.begin() as conn:
        await conn.execute(
            t.payment_providers.update()
            .where(t.payment_providers.c.tenant_id == tenant.id)
            .values(key_id="rzp_test_unknownkey0000", updated_at=sa.func.now())
        )
    for _ in range(3):
        reply = await gateway.call("POST", "/sync/v1/payments", upi_payment_body(mid))
        assert reply.status == 502, reply.body
        assert reply.error["code"] == "provider_rejected"
        assert reply.error["details"]["http_status"] == 401
    breaker = cloud.context.providers.breakers()[tenant.id]
    assert breaker["state"] == "closed" and breaker["consecutive_failures"] == 0


async def test_breaker_opens_on_outage_and_a_probe_closes_it(
    tenant, enroll, upi_tenant, razorpay_server, cloud, http
):
    now = [1000.0]
    cloud.context.providers.clock = lambda: now[0]
    await upi_tenant()
    mid, gateway = await machine_and_gateway(tenant, enroll)
    razorpay_server.set_faults("qr_create", "error_503")

    # Two failures in a row (provider_breaker_threshold=2 in these tests) open it.
    for _ in range(2):
        reply = await gateway.call("POST", "/sync/v1/payments", upi_payment_body(mid))
        assert reply.status == 503, reply.body
        assert reply.error["code"] == "provider_unavailable"
    [fault] = razorpay_server.engine.faults.public()
    assert fault["fired"] == 2

    # Open: answered at once, without contacting the provider, nothing charged.
    refused = await gateway.call("POST", "/sync/v1/payments", upi_payment_body(mid))
    assert refused.status == 503 and refused.error["code"] == "provider_unavailable"
    assert "not attempted" in refused.error["message"]
    assert razorpay_server.engine.faults.public()[0]["fired"] == 2
    async with http.get(cloud.api_url + "/health") as resp:
        health = await resp.json()
    assert health["payment_providers"]["open"] == 1
    assert tenant.id not in json.dumps(health)  # public: names no tenant
    admin_view = await tenant.admin.call("GET", "/api/v1/payments/provider")
    assert admin_view.data["breaker"]["state"] == "open"
    async with cloud.engine.connect() as conn:
        count = await conn.scalar(
            sa.select(sa.func.count())
            .select_from(t.payments)
            .where(t.payments.c.tenant_id == tenant.id)
        )
    assert count == 0

    # After the recovery time one probe goes through; the provider is back, so it closes.
    razorpay_server.clear_faults()
    now[0] += cloud.settings.provider_breaker_recovery_s + 1
    assert cloud.context.providers.breakers()[tenant.id]["state"] == "half_open"
    probe = await gateway.call("POST", "/sync/v1/payments", upi_payment_body(mid))
    assert probe.status == 201, probe.body
    assert cloud.context.providers.breakers()[tenant.id]["state"] == "closed"
    async with http.get(cloud.api_url + "/health") as resp:
        assert (await resp.json())["payment_providers"]["open"] == 0


async def test_a_failed_probe_opens_it_again(tenant, enroll, upi_tenant, razorpay_server, cloud):
    now = [1000.0]
    cloud.context.providers.clock = lambda: now[0]
    await upi_tenant()
    mid, gateway = await machine_and_gateway(tenant, enroll)
    razorpay_server.set_faults("qr_create", "error_500")
    for _ in range(2):
        assert (
            await gateway.call("POST", "/sync/v1/payments", upi_payment_body(mid))
        ).status == 503
    now[0] += cloud.settings.provider_breaker_recovery_s + 1
    probe = await gateway.call("POST", "/sync/v1/payments", upi_payment_body(mid))
    assert probe.status == 503
    snapshot = cloud.context.providers.breakers()[tenant.id]
    assert snapshot["state"] == "open" and snapshot["opened_total"] == 2
    assert razorpay_server.engine.faults.public()[0]["fired"] == 3


async def close_state(cloud, payment_id):
    return (await payment_row(cloud, payment_id)).close_state


async def mark_ended(cloud, payment_id):
    """What cloud.sync.events does when an order snapshot says cancelled or expired."""
    async with cloud.engine.begin() as conn:
        await conn.execute(
            t.payments.update().where(t.payments.c.id == payment_id).values(close_state="pending")
        )


async def test_closer_closes_qr_codes_of_ended_orders(
    tenant, enroll, upi_tenant, razorpay_server, cloud, poll
):
    await upi_tenant()
    mid, gateway = await machine_and_gateway(tenant, enroll)
    intents = []
    for _ in range(3):
        reply = await gateway.call("POST", "/sync/v1/payments", upi_payment_body(mid))
        assert reply.status == 201, reply.body
        intents.append(reply.data)
    open_one, expired, flaky = intents
    # One already closed at the provider (close_by passed): closing it again is fine.
    razorpay_server.expire_qr(expired["provider_ref"])
    # One whose first close attempt meets a provider error: retried with backoff.
    razorpay_server.set_faults("qr_close", "error_502", count=1)
    for intent in (flaky, expired, open_one):
        await mark_ended(cloud, intent["payment_id"])

    for intent in intents:
        await poll(lambda i=intent: _is(close_state(cloud, i["payment_id"]), "closed"))
    assert qr_on_server(razorpay_server, open_one["provider_ref"])["close_reason"] == "on_demand"
    assert qr_on_server(razorpay_server, flaky["provider_ref"])["status"] == "closed"
    assert qr_on_server(razorpay_server, expired["provider_ref"])["close_reason"] == "auto"
    row = await payment_row(cloud, open_one["payment_id"])
    assert row.closed_at is not None and row.status == "created"


async def test_closer_gives_up_after_its_tries(
    tenant, enroll, upi_tenant, razorpay_server, cloud, poll
):
    cloud.settings.provider_close_attempts = 2
    await upi_tenant()
    mid, gateway = await machine_and_gateway(tenant, enroll)
    reply = await gateway.call("POST", "/sync/v1/payments", upi_payment_body(mid))
    razorpay_server.set_faults("qr_close", "error_500")
    await mark_ended(cloud, reply.data["payment_id"])
    await poll(lambda: _is(close_state(cloud, reply.data["payment_id"]), "failed"))
    row = await payment_row(cloud, reply.data["payment_id"])
    assert row.failure_reason and "Razorpay" in row.failure_reason
    assert qr_on_server(razorpay_server, reply.data["provider_ref"])["status"] == "active"


async def test_sandbox_payments_close_without_a_provider(tenant, enroll, cloud, poll):
    mid, gateway = await machine_and_gateway(tenant, enroll)
    body = upi_payment_body(mid) | {"method": "sandbox"}
    cloud.settings.sandbox_approve_delay_s = 3600  # stays created
    reply = await gateway.call("POST", "/sync/v1/payments", body)
    await mark_ended(cloud, reply.data["payment_id"])
    await poll(lambda: _is(close_state(cloud, reply.data["payment_id"]), "closed"))


async def test_poller_applies_a_payment_whose_webhooks_were_lost(
    tenant, enroll, upi_tenant, razorpay_server, cloud, poll
):
    await upi_tenant()
    mid, gateway = await machine_and_gateway(tenant, enroll)
    razorpay_server.set_webhook_mode(drop=True)
    reply = await gateway.call("POST", "/sync/v1/payments", upi_payment_body(mid, amount=2000))
    payment_id, qr_id = reply.data["payment_id"], reply.data["provider_ref"]
    paid = razorpay_server.pay(qr_id)
    assert paid["status"] == "captured"
    assert {d.state for d in razorpay_server.deliveries} == {"dropped"}

    await poll(lambda: _is(_status(cloud, payment_id), "captured"))
    row = await payment_row(cloud, payment_id)
    assert row.provider_payment_id == paid["id"] and row.polled_at is not None
    async with cloud.engine.connect() as conn:
        seen = (
            await conn.execute(
                sa.select(t.provider_payments).where(t.provider_payments.c.id == paid["id"])
            )
        ).one()
    assert (seen.source, seen.payment_id, seen.amount) == ("poll", payment_id, 2000)


async def test_poller_leaves_unpaid_codes_alone(
    tenant, enroll, upi_tenant, razorpay_server, cloud, poll
):
    await upi_tenant()
    mid, gateway = await machine_and_gateway(tenant, enroll)
    reply = await gateway.call("POST", "/sync/v1/payments", upi_payment_body(mid))
    payment_id = reply.data["payment_id"]
    # Polled (more than once), found nothing, still waiting for the customer.
    first = await poll(lambda: _polled_at(cloud, payment_id))
    await poll(lambda: _later(_polled_at(cloud, payment_id), first))
    row = await payment_row(cloud, payment_id)
    assert row.status == "created" and row.provider_payment_id is None


async def _is(value_coro, expected):
    return (await value_coro) == expected


async def _status(cloud, payment_id):
    return (await payment_row(cloud, payment_id)).status


async def _polled_at(cloud, payment_id):
    return (await payment_row(cloud, payment_id)).polled_at


async def _later(value_coro, than):
    value = await value_coro
    return value is not None and value > than


@pytest.mark.slow
async def test_open_breaker_answers_within_100_ms(
    tenant, enroll, upi_tenant, razorpay_server, cloud
):
    """The issue's claim, timed (slow marker: timing belongs outside the default suite): with
    the provider hanging, once the breaker is open a payment is refused within 100 ms."""
    await upi_tenant()
    mid, gateway = await machine_and_gateway(tenant, enroll)
    razorpay_server.set_faults("qr_create", "timeout")  # hangs past razorpay_timeout_s
    for _ in range(2):
        assert (
            await gateway.call("POST", "/sync/v1/payments", upi_payment_body(mid))
        ).status == 503
    took = []
    for _ in range(20):
        started = time.perf_counter()
        reply = await gateway.call("POST", "/sync/v1/payments", upi_payment_body(mid))
        took.append(time.perf_counter() - started)
        assert reply.status == 503 and reply.error["code"] == "provider_unavailable"
    assert max(took) < 0.1, took
