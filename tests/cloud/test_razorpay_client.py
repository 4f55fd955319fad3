"""The async Razorpay client and provider against the local test server: each endpoint, the
error mapping (outage vs refusal), timeouts, refund idempotency and closing closed codes."""

import socket
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import aiohttp
import pytest
from razorpay_fixtures import new_credentials, razorpay_server

from cloud.db.times import utcnow
from cloud.payments.provider import PaymentRequest, ProviderRejected, ProviderUnavailable
from cloud.payments.razorpay import (
    RazorpayClient,
    RazorpayCredentials,
    RazorpayProvider,
    close_by_for,
    new_session,
)
from tools.razorpay_server import RazorpayTestServer

__all__ = ["razorpay_server"]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    http = await new_session()
    yield http
    await http.close()


@pytest.fixture
def client(razorpay_server: RazorpayTestServer, session) -> RazorpayClient:
    creds = new_credentials()
    razorpay_server.add_account(creds["key_id"], creds["key_secret"], creds["webhook_secret"])
    return RazorpayClient(
        session,
        razorpay_server.url,
        RazorpayCredentials(creds["key_id"], creds["key_secret"]),
        timeout_s=1.0,
    )


async def new_qr(client: RazorpayClient, amount: int = 1500):
    return await client.create_qr(
        amount=amount,
        close_by=int(time.time()) + 300,
        notes={"order_id": "o-1", "payment_id": "p-1", "machine_id": "m-1", "none": None},
        name="Vending",
        description="Order o-1",
    )


async def test_qr_code_life(client, razorpay_server):
    qr = await new_qr(client)
    assert qr.id.startswith("qr_") and qr.status == "active" and qr.payment_amount == 1500
    assert qr.notes == {"order_id": "o-1", "payment_id": "p-1", "machine_id": "m-1"}
    assert qr.image_content and qr.image_content.startswith("upi://pay?")
    assert (await client.fetch_qr(qr.id)).id == qr.id
    assert await client.qr_payments(qr.id) == []

    paid = razorpay_server.pay(qr.id)
    [payment] = await client.qr_payments(qr.id)
    assert (payment.id, payment.status, payment.amount) == (paid["id"], "captured", 1500)
    assert payment.method == "upi" and payment.raw["id"] == paid["id"]
    fetched = await client.fetch_payment(paid["id"])
    assert fetched.status == "captured" and fetched.amount_refunded == 0
    # A single-use code closes itself once paid.
    assert (await client.fetch_qr(qr.id)).status == "closed"


async def test_refund_is_idempotent_on_our_refund_id(client, razorpay_server):
    qr = await new_qr(client, 2000)
    paid = razorpay_server.pay(qr.id)
    first = await client.create_refund(
        paid["id"], amount=500, refund_id="rf-order-1-undispensed", order_id="order-1"
    )
    assert first.id.startswith("rfnd_") and first.amount == 500 and first.payment_id == paid["id"]
    assert first.raw["notes"] == {"refund_id": "rf-order-1-undispensed", "order_id": "order-1"}
    again = await client.create_refund(
        paid["id"], amount=500, refund_id="rf-order-1-undispensed", order_id="order-1"
    )
    assert again.id == first.id
    # The provider made the refund but the answer was lost: the retry gets the same refund.
    razorpay_server.set_faults("refund_create", "error_500", count=1, when="after")
    with pytest.raises(ProviderUnavailable):
        await client.create_refund(
            paid["id"], amount=700, refund_id="rf-order-1-held00", order_id="order-1"
        )
    retried = await client.create_refund(
        paid["id"], amount=700, refund_id="rf-order-1-held00", order_id="order-1"
    )
    refunds = [r for r in razorpay_server.state["refunds"] if r["payment_id"] == paid["id"]]
    assert sorted(r["id"] for r in refunds) == sorted({first.id, retried.id})
    await razorpay_server.wait_until(
        lambda: all(r["status"] == "processed" for r in razorpay_server.state["refunds"])
    )
    assert (await client.fetch_refund(first.id)).status == "processed"


async def test_outage_and_refusal_are_told_apart(client, razorpay_server):
    for mode in ("error_500", "error_502", "error_503"):
        razorpay_server.set_faults("qr_create", mode, count=1)
        with pytest.raises(ProviderUnavailable) as outage:
            await new_qr(client)
        assert outage.value.status == 503 and outage.value.code == "provider_unavailable"

    with pytest.raises(ProviderRejected) as refused:
        await client.fetch_qr("qr_doesnotexist00")
    assert refused.value.http_status in (400, 404)
    assert refused.value.error_code == "BAD_REQUEST_ERROR"
    assert refused.value.status == 502 and refused.value.code == "provider_rejected"

    with pytest.raises(ProviderRejected) as bad_amount:
        await new_qr(client, amount=0)
    assert bad_amount.value.http_status == 400


async def test_wrong_key_is_a_refusal(razorpay_server, session):
    client = RazorpayClient(
        session,
        razorpay_server.url,
        RazorpayCredentials("rzp_test_nobodyknowsme", "x" * 24),
        timeout_s=1.0,
    )
    with pytest.raises(ProviderRejected) as refused:
        await new_qr(client)
    assert refused.value.http_status == 401
    assert "x" * 24 not in str(refused.value)


async def test_a_hung_provider_times_out(client, razorpay_server):
    razorpay_server.set_faults("qr_get", "timeout", count=1)
    qr = await new_qr(client)
    with pytest.raises(ProviderUnavailable) as hung:
        await client.fetch_qr(qr.id)
    assert isinstance(hung.value.__cause__, TimeoutError)
    assert "no answer in time" in hung.value.message


async def test_nobody_listening_is_an_outage(session):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = RazorpayClient(
        session,
        f"http://127.0.0.1:{port}",
        RazorpayCredentials("rzp_test_a", "b" * 24),
        timeout_s=1,
    )
    with pytest.raises(ProviderUnavailable) as down:
        await client.fetch_payment("pay_abc")
    assert isinstance(down.value.__cause__, aiohttp.ClientError)


async def test_ids_never_reach_the_path_unchecked(client):
    for bad in ("../../v1/refunds", "qr_1/close", "qr_1?x=1", ""):
        with pytest.raises(ProviderRejected):
            await client.fetch_qr(bad)


async def test_provider_create_close_and_refund(client, razorpay_server):
    provider = RazorpayProvider(client)
    expires = utcnow() + timedelta(seconds=300)
    made = await provider.create(PaymentRequest("pay-1", "order-1", "m-1", 1200, "INR", expires))
    assert made.provider_ref and made.approve_at is None and made.expires_at == expires
    qr = await client.fetch_qr(made.provider_ref)
    assert qr.close_by == int(expires.timestamp())
    assert (await provider.lookup(made.provider_ref)).image_url == qr.image_url

    await provider.close(made.provider_ref)
    assert (await client.fetch_qr(made.provider_ref)).close_reason == "on_demand"
    await provider.close(made.provider_ref)  # closed already: fine

    other = await provider.create(PaymentRequest("pay-2", "order-2", "m-1", 800, "INR", expires))
    paid = razorpay_server.pay(other.provider_ref)
    await provider.close(other.provider_ref)  # paid (closed by itself): fine
    found = await provider.payments_of(other.provider_ref)
    assert found.qr_code["id"] == other.provider_ref
    assert [p["id"] for p in found.payments] == [paid["id"]]
    refund = await provider.refund("rf-pay-2-unserved", paid["id"], 800, order_id="order-2")
    assert refund.provider_refund_id and refund.status in ("pending", "processed")
    with pytest.raises(ProviderRejected):
        await provider.refund("rf-pay-3-unserved", None, 800)


def test_close_by_is_never_less_than_two_minutes_ahead():
    now = utcnow()
    assert close_by_for(now + timedelta(seconds=30), now) == int(now.timestamp()) + 125
    assert close_by_for(now + timedelta(seconds=900), now) == int(now.timestamp()) + 900
