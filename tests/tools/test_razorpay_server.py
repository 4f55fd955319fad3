"""The Razorpay test server against Razorpay's documented behaviour for the subset we use:
QR codes, payments, refunds, the error envelope, auth, and signed webhooks."""

import hashlib
import hmac
import time
from typing import Any

import pytest
from aiohttp import ClientSession
from conftest import KEY_ID, KEY_SECRET, WEBHOOK_SECRET, Receiver, auth

from tools.razorpay_server import RazorpayTestServer

ERROR_KEYS = {"code", "description", "source", "step", "reason", "metadata"}


def qr_body(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "upi_qr",
        "name": "Machine M1",
        "usage": "single_use",
        "fixed_amount": True,
        "payment_amount": 2500,
        "description": "Order o-1",
        "close_by": int(time.time()) + 300,
        "notes": {"order_id": "o-1", "payment_id": "p-1", "machine_id": "m-1"},
    }
    body.update(over)
    return {k: v for k, v in body.items() if v is not None}


async def create_qr(http: ClientSession, **over: Any) -> dict[str, Any]:
    async with http.post("/v1/payments/qr_codes", json=qr_body(**over)) as r:
        assert r.status == 200, await r.text()
        return dict(await r.json())


async def error_of(resp: Any, status: int = 400) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body) == {"error"}
    assert ERROR_KEYS <= set(body["error"])
    return dict(body["error"])


def signature_ok(raw: bytes, sig: str) -> bool:
    want = hmac.new(WEBHOOK_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, sig)


# -- QR codes ---------------------------------------------------------------------------------


async def test_create_fetch_close_qr(http: ClientSession, rzp: RazorpayTestServer) -> None:
    qr = await create_qr(http)
    assert qr["id"].startswith("qr_") and len(qr["id"]) == 17
    assert qr["entity"] == "qr_code" and qr["status"] == "active"
    assert qr["usage"] == "single_use" and qr["type"] == "upi_qr" and qr["fixed_amount"] is True
    assert qr["payment_amount"] == 2500
    assert qr["payments_amount_received"] == 0 and qr["payments_count_received"] == 0
    assert qr["notes"] == {"order_id": "o-1", "payment_id": "p-1", "machine_id": "m-1"}
    assert qr["closed_at"] is None and qr["close_reason"] is None
    assert qr["image_url"] == f"{rzp.url}/_test/qr_codes/{qr['id']}/image.svg"
    assert qr["image_content"].startswith("upi://pay?")
    assert "am=25.00" in qr["image_content"] and "cu=INR" in qr["image_content"]

    async with http.get(f"/v1/payments/qr_codes/{qr['id']}") as r:
        assert r.status == 200
        assert await r.json() == qr

    async with http.post(f"/v1/payments/qr_codes/{qr['id']}/close") as r:
        assert r.status == 200
        closed = await r.json()
    assert closed["status"] == "closed" and closed["close_reason"] == "on_demand"
    assert isinstance(closed["closed_at"], int)

    async with http.post(f"/v1/payments/qr_codes/{qr['id']}/close") as r:
        err = await error_of(r)
    assert err["code"] == "BAD_REQUEST_ERROR" and "already closed" in err["description"]

    async with http.get(f"{rzp.url}/_test/qr_codes/{qr['id']}/image.svg") as r:
        assert r.status == 200 and r.content_type == "image/svg+xml"
        assert b"<svg" in await r.read()


@pytest.mark.parametrize(
    ("over", "field", "words"),
    [
        ({"type": None}, "type", "type field is required"),
        ({"type": "bharat_qr"}, "type", "upi_qr"),
        ({"usage": "twice"}, "usage", "usage is invalid"),
        ({"payment_amount": None}, "payment_amount", "required when fixed_amount"),
        ({"payment_amount": 99}, "payment_amount", "at least INR 1.00"),
        ({"payment_amount": "2500"}, "payment_amount", "integer"),
        ({"close_by": int(time.time()) + 60}, "close_by", "at least 2 minutes"),
        ({"notes": {f"k{i}": "v" for i in range(16)}}, "notes", "15"),
        ({"notes": {"k": "x" * 257}}, "notes", "256"),
    ],
)
async def test_qr_validation_errors(
    http: ClientSession, over: dict[str, Any], field: str, words: str
) -> None:
    async with http.post("/v1/payments/qr_codes", json=qr_body(**over)) as r:
        err = await error_of(r)
    assert err["code"] == "BAD_REQUEST_ERROR"
    assert err["field"] == field
    assert words in err["description"]
    assert err["reason"] == "input_validation_failed"


async def test_unknown_field_and_bad_json_refused(http: ClientSession) -> None:
    async with http.post("/v1/payments/qr_codes", json=qr_body(colour="red")) as r:
        err = await error_of(r)
    assert "colour" in err["description"]
    async with http.post("/v1/payments/qr_codes", data=b"{not json") as r:
        await error_of(r)
    async with http.get("/v1/no/such/api") as r:
        err = await error_of(r)
    assert "not found" in err["description"]


async def test_auth_failures(rzp: RazorpayTestServer, anon: ClientSession) -> None:
    async with anon.post("/v1/payments/qr_codes", json=qr_body()) as r:
        err = await error_of(r, 401)
    assert err["code"] == "BAD_REQUEST_ERROR" and err["description"] == "Authentication failed"
    async with anon.post(
        "/v1/payments/qr_codes", json=qr_body(), headers=auth(KEY_ID, "wrong")
    ) as r:
        await error_of(r, 401)
    async with anon.get("/v1/payments/qr_codes/qr_x", headers={"Authorization": "Basic !!"}) as r:
        await error_of(r, 401)


async def test_accounts_are_isolated(rzp: RazorpayTestServer, http: ClientSession) -> None:
    qr = await create_qr(http)
    rzp.add_account("rzp_test_other", "other-secret", "other-hook-secret")
    async with ClientSession(
        base_url=rzp.url, headers=auth("rzp_test_other", "other-secret")
    ) as other:
        async with other.get(f"/v1/payments/qr_codes/{qr['id']}") as r:
            err = await error_of(r)
    assert err["description"] == "The id provided does not exist"


# -- paying and webhooks ----------------------------------------------------------------------


async def test_pay_sends_signed_webhooks_and_closes_single_use_qr(
    http: ClientSession, rzp: RazorpayTestServer, receiver: Receiver
) -> None:
    qr = await create_qr(http)
    payment = rzp.pay(qr["id"], vpa="alice@okicici")
    assert payment["id"].startswith("pay_") and payment["entity"] == "payment"
    assert payment["status"] == "captured" and payment["captured"] is True
    assert payment["method"] == "upi" and payment["vpa"] == "alice@okicici"
    assert payment["amount"] == 2500 and payment["currency"] == "INR"
    assert payment["amount_refunded"] == 0 and payment["refund_status"] is None
    assert payment["notes"] == qr["notes"]
    assert len(payment["acquirer_data"]["rrn"]) == 12

    received = await receiver.wait_for(3)
    assert receiver.events() == ["payment.captured", "qr_code.credited", "qr_code.closed"]
    assert len({hook.event_id for hook in received}) == 3
    account_id = rzp.state["accounts"][0]["account_id"]
    for hook in received:
        assert hook.headers["Content-Type"] == "application/json"
        assert signature_ok(hook.raw, hook.headers["X-Razorpay-Signature"])
        body = hook.body
        assert body["entity"] == "event" and body["account_id"] == account_id
        assert isinstance(body["created_at"], int)
        assert hook.event_id.startswith("evt_")
    captured, credited, closed = (hook.body for hook in received)
    assert captured["contains"] == ["payment"]
    assert captured["payload"]["payment"]["entity"] == payment
    assert credited["contains"] == ["payment", "qr_code"]
    assert credited["payload"]["qr_code"]["entity"]["id"] == qr["id"]
    assert credited["payload"]["qr_code"]["entity"]["payments_amount_received"] == 2500
    assert closed["payload"]["qr_code"]["entity"]["close_reason"] == "paid"

    async with http.get(f"/v1/payments/qr_codes/{qr['id']}") as r:
        after = await r.json()
    assert after["status"] == "closed" and after["close_reason"] == "paid"
    assert after["payments_count_received"] == 1
    async with http.get(f"/v1/payments/qr_codes/{qr['id']}/payments") as r:
        coll = await r.json()
    assert coll == {"entity": "collection", "count": 1, "items": [payment]}
    async with http.get(f"/v1/payments/{payment['id']}") as r:
        assert await r.json() == payment
    await rzp.wait_until(lambda: len(rzp.delivered()) == 3)


async def test_paying_a_closed_qr_is_refused_unless_allowed(
    http: ClientSession, rzp: RazorpayTestServer
) -> None:
    qr = await create_qr(http)
    async with http.post(f"/v1/payments/qr_codes/{qr['id']}/close"):
        pass
    async with http.post(f"/_test/qr_codes/{qr['id']}/pay", json={}) as r:
        err = await error_of(r)
    assert "closed" in err["description"] and "nothing was charged" in err["description"]
    async with http.post(f"/_test/qr_codes/{qr['id']}/pay", json={"amount": 2400}) as r:
        await error_of(r)
    async with http.post(f"/_test/qr_codes/{qr['id']}/pay", json={"allow_closed": True}) as r:
        assert r.status == 200
        late = await r.json()
    assert late["status"] == "captured"
    assert rzp.state["qr_codes"][0]["payments_count_received"] == 1


async def test_failed_payment_sends_payment_failed(
    http: ClientSession, rzp: RazorpayTestServer, receiver: Receiver
) -> None:
    qr = await create_qr(http)
    payment = rzp.pay(qr["id"], fail=True)
    assert payment["status"] == "failed" and payment["captured"] is False
    assert payment["error_reason"] == "payment_declined"
    (r,) = await receiver.wait_for(1)
    assert r.event == "payment.failed"
    async with http.get(f"/v1/payments/qr_codes/{qr['id']}") as resp:
        assert (await resp.json())["status"] == "active"


async def test_qr_expires_at_close_by(receiver: Receiver) -> None:
    async with RazorpayTestServer(min_close_by_s=0, expiry_sweep_s=0.05) as rzp:
        rzp.add_account(KEY_ID, KEY_SECRET, WEBHOOK_SECRET, receiver.url)
        async with ClientSession(base_url=rzp.url, headers=auth(KEY_ID, KEY_SECRET)) as http:
            close_by = int(time.time()) + 1
            qr = await create_qr(http, close_by=close_by)
            await rzp.wait_until(lambda: rzp.ledger.qr_codes[qr["id"]].status == "closed", 5)
            async with http.get(f"/v1/payments/qr_codes/{qr['id']}") as r:
                after = await r.json()
            assert after["close_reason"] == "auto" and after["closed_at"] == close_by
            async with http.post(f"/_test/qr_codes/{qr['id']}/pay", json={}) as r:
                await error_of(r)
            # Expiry is documented to raise no qr_code.closed webhook.
            assert not rzp.deliveries


async def test_expire_control_closes_at_once(http: ClientSession, rzp: RazorpayTestServer) -> None:
    qr = await create_qr(http)
    async with http.post(f"/_test/qr_codes/{qr['id']}/expire") as r:
        assert (await r.json())["close_reason"] == "auto"


# -- webhook misbehaviour ---------------------------------------------------------------------


async def test_duplicate_webhooks_keep_event_id(
    http: ClientSession, rzp: RazorpayTestServer, receiver: Receiver
) -> None:
    rzp.set_webhook_mode(duplicate=2)
    qr = await create_qr(http)
    rzp.pay(qr["id"])
    received = await receiver.wait_for(9)
    by_id: dict[str, list[bytes]] = {}
    for r in received:
        by_id.setdefault(r.event_id, []).append(r.raw)
    assert len(by_id) == 3
    for copies in by_id.values():
        assert len(copies) == 3 and len(set(copies)) == 1


async def test_concurrent_duplicates(
    http: ClientSession, rzp: RazorpayTestServer, receiver: Receiver
) -> None:
    rzp.set_webhook_mode(duplicate=1, concurrent=True)
    qr = await create_qr(http)
    rzp.pay(qr["id"])
    received = await receiver.wait_for(6)
    assert len({r.event_id for r in received}) == 3


async def test_reverse_order(
    http: ClientSession, rzp: RazorpayTestServer, receiver: Receiver
) -> None:
    rzp.set_webhook_mode(reverse=True)
    qr = await create_qr(http)
    rzp.pay(qr["id"])
    await receiver.wait_for(3)
    assert receiver.events() == ["qr_code.closed", "qr_code.credited", "payment.captured"]


async def test_hold_then_release_and_late_delivery(
    http: ClientSession, rzp: RazorpayTestServer, receiver: Receiver
) -> None:
    async with http.post("/_test/webhooks/mode", json={"hold": True}) as r:
        assert (await r.json())["hold"] is True
    qr = await create_qr(http)
    rzp.pay(qr["id"])
    assert {d.state for d in rzp.deliveries} == {"held"}
    async with http.get("/_test/webhooks") as r:
        log = await r.json()
    assert log["held"] == 3 and len(log["deliveries"]) == 3
    rzp.set_webhook_mode(hold=False, delay_s=0.1)
    async with http.post("/_test/webhooks/release") as r:
        assert (await r.json()) == {"released": 3}
    await receiver.wait_for(3)
    # Released batches keep the mode they were published under (no delay then).
    qr2 = await create_qr(http, notes={"order_id": "o-2"})
    rzp.pay(qr2["id"])
    await receiver.wait_for(6)
    await rzp.wait_until(lambda: len(rzp.delivered()) == 6)


async def test_drop_then_redeliver(
    http: ClientSession, rzp: RazorpayTestServer, receiver: Receiver
) -> None:
    rzp.set_webhook_mode(drop=True)
    qr = await create_qr(http)
    rzp.pay(qr["id"])
    dropped = rzp.deliveries
    assert {d.state for d in dropped} == {"dropped"}
    credited = next(d for d in dropped if d.event == "qr_code.credited")
    async with http.post(f"/_test/webhooks/redeliver/{credited.event_id}") as r:
        assert r.status == 200
    (got,) = await receiver.wait_for(1)
    assert got.event_id == credited.event_id and got.raw == credited.body
    await rzp.wait_until(lambda: credited.state == "delivered")


async def test_retries_until_2xx_then_gives_up(
    http: ClientSession, rzp: RazorpayTestServer, receiver: Receiver
) -> None:
    rzp.set_webhook_mode(drop=False)
    receiver.statuses = [500, 503]
    qr = await create_qr(http, usage="multiple_use", close_by=None)
    rzp.pay(qr["id"])  # multiple_use: payment.captured + qr_code.credited only
    # Statuses go to whichever arrives first; both events end delivered, three tries in all
    # beyond the two successes.
    await rzp.wait_until(lambda: len(rzp.delivered()) == 2)
    assert sum(len(d.attempts) for d in rzp.deliveries) == 4
    ids = [r.event_id for r in receiver.received]
    assert len(set(ids)) == 2

    receiver.statuses = [500] * 12  # 3 events x (1 + 3 retries)
    qr2 = await create_qr(http, notes={"order_id": "o-2"})
    rzp.pay(qr2["id"])
    await rzp.wait_until(lambda: sum(d.state == "failed" for d in rzp.deliveries) == 3)
    failed = [d for d in rzp.deliveries if d.state == "failed"]
    assert {len(d.attempts) for d in failed} == {4}  # 1 + three retry delays
    assert all(d.last_status == 500 for d in failed)


async def test_unreachable_webhook_url_is_logged(http: ClientSession) -> None:
    async with RazorpayTestServer(webhook_retry_delays=(0.01,)) as rzp:
        rzp.add_account(KEY_ID, KEY_SECRET, WEBHOOK_SECRET, "http://127.0.0.1:9/nothing")
        async with ClientSession(base_url=rzp.url, headers=auth(KEY_ID, KEY_SECRET)) as h:
            qr = await create_qr(h)
        rzp.pay(qr["id"])
        await rzp.wait_until(lambda: all(d.state == "failed" for d in rzp.deliveries))
        assert all(d.attempts[-1].error for d in rzp.deliveries)


# -- faults -----------------------------------------------------------------------------------


async def test_error_faults_then_recovery(http: ClientSession, rzp: RazorpayTestServer) -> None:
    async with http.post(
        "/_test/faults", json={"endpoint": "qr_create", "mode": "error_503", "count": 2}
    ) as r:
        assert r.status == 200
    for _ in range(2):
        async with http.post("/v1/payments/qr_codes", json=qr_body()) as r:
            err = await error_of(r, 503)
        assert err["code"] == "SERVER_ERROR"
    qr = await create_qr(http)
    rzp.set_faults("*", "error_500")
    async with http.get(f"/v1/payments/qr_codes/{qr['id']}") as r:
        await error_of(r, 500)
    async with http.delete("/_test/faults") as r:
        assert (await r.json()) == {"cleared": 1}
    async with http.get(f"/v1/payments/qr_codes/{qr['id']}") as r:
        assert r.status == 200


async def test_timeout_fault(http: ClientSession, rzp: RazorpayTestServer) -> None:
    import aiohttp

    rzp.set_faults("qr_get", "timeout", count=1, delay_s=30)
    qr = await create_qr(http)
    with pytest.raises(TimeoutError):
        async with http.get(
            f"/v1/payments/qr_codes/{qr['id']}", timeout=aiohttp.ClientTimeout(total=0.3)
        ):
            pass
    async with http.get(f"/v1/payments/qr_codes/{qr['id']}") as r:
        assert r.status == 200


async def test_fault_validation(http: ClientSession) -> None:
    async with http.post("/_test/faults", json={"endpoint": "nope", "mode": "error_500"}) as r:
        err = await error_of(r)
    assert err["field"] == "endpoint"
    async with http.post("/_test/faults", json={"endpoint": "*", "mode": "explode"}) as r:
        await error_of(r)


# -- refunds ----------------------------------------------------------------------------------


async def paid(http: ClientSession, rzp: RazorpayTestServer, amount: int = 2500) -> str:
    qr = await create_qr(http, payment_amount=amount)
    return str(rzp.pay(qr["id"])["id"])


async def refund(
    http: ClientSession, payment_id: str, body: dict[str, Any], key: str | None = None
) -> Any:
    headers = {"X-Refund-Idempotency": key} if key else {}
    return http.post(f"/v1/payments/{payment_id}/refund", json=body, headers=headers)


async def test_refund_idempotency(
    http: ClientSession, rzp: RazorpayTestServer, receiver: Receiver
) -> None:
    pay_id = await paid(http, rzp)
    body = {"amount": 1000, "speed": "normal", "notes": {"reason": "jam"}, "receipt": "rf-o-1"}
    async with await refund(http, pay_id, body, "rf-o-1-undispensed") as r:
        assert r.status == 200
        first = await r.json()
    assert first["id"].startswith("rfnd_") and first["entity"] == "refund"
    assert first["status"] == "pending" and first["payment_id"] == pay_id
    assert first["amount"] == 1000 and first["currency"] == "INR"
    assert first["speed_requested"] == "normal" and first["receipt"] == "rf-o-1"
    assert first["acquirer_data"] == {"arn": None}
    async with await refund(http, pay_id, body, "rf-o-1-undispensed") as r:
        again = await r.json()
    assert again["id"] == first["id"]
    async with await refund(http, pay_id, body | {"amount": 900}, "rf-o-1-undispensed") as r:
        err = await error_of(r)
    assert "same idempotency key" in err["description"]
    async with await refund(http, pay_id, body, "short") as r:
        await error_of(r)
    assert len(rzp.state["refunds"]) == 1

    await rzp.wait_until(lambda: len(rzp.delivered("refund.processed")) == 1)
    assert len(rzp.delivered("refund.created")) == 1
    async with http.get(f"/v1/refunds/{first['id']}") as r:
        done = await r.json()
    assert done["status"] == "processed" and done["acquirer_data"]["arn"]
    processed = next(r for r in receiver.received if r.event == "refund.processed").body
    assert processed["contains"] == ["refund", "payment"]
    assert processed["payload"]["refund"]["entity"] == done
    assert processed["payload"]["payment"]["entity"]["amount_refunded"] == 1000
    assert processed["payload"]["payment"]["entity"]["refund_status"] == "partial"
    # The same key after processing still answers the same refund, now processed.
    async with await refund(http, pay_id, body, "rf-o-1-undispensed") as r:
        assert (await r.json())["status"] == "processed"


async def test_over_refund_refused_and_full_refund(
    http: ClientSession, rzp: RazorpayTestServer
) -> None:
    pay_id = await paid(http, rzp)
    async with await refund(http, pay_id, {"amount": 2600}, "rf-over-000001") as r:
        err = await error_of(r)
    assert err["field"] == "amount"
    async with await refund(http, pay_id, {"amount": 50}, "rf-tiny-000001") as r:
        err = await error_of(r)
    assert "at least INR 1.00" in err["description"]
    async with await refund(http, pay_id, {"amount": 1500}, "rf-part-000001") as r:
        assert r.status == 200
    async with await refund(http, pay_id, {"amount": 1001}, "rf-part-000002") as r:
        await error_of(r)
    async with await refund(http, pay_id, {}, "rf-rest-000001") as r:
        rest = await r.json()
    assert rest["amount"] == 1000
    async with await refund(http, pay_id, {}, "rf-more-000001") as r:
        err = await error_of(r)
    assert "fully refunded" in err["description"]
    async with http.get(f"/v1/payments/{pay_id}") as r:
        payment = await r.json()
    assert payment["amount_refunded"] == 2500 and payment["refund_status"] == "full"
    async with http.get(f"/v1/payments/{pay_id}/refunds") as r:
        refunds = await r.json()
    assert refunds["entity"] == "collection" and refunds["count"] == 2


async def test_failed_refunds(
    http: ClientSession, rzp: RazorpayTestServer, receiver: Receiver
) -> None:
    rzp.set_webhook_mode(fail_refunds=True)
    pay_id = await paid(http, rzp)
    async with await refund(http, pay_id, {"amount": 2500}, "rf-fail-000001") as r:
        created = await r.json()
    await rzp.wait_until(lambda: len(rzp.delivered("refund.failed")) == 1)
    async with http.get(f"/v1/refunds/{created['id']}") as r:
        assert (await r.json())["status"] == "failed"
    async with http.get(f"/v1/payments/{pay_id}") as r:
        payment = await r.json()
    # A failed refund gives the amount back: it can be refunded again with a new key.
    assert payment["amount_refunded"] == 0 and payment["refund_status"] is None
    failed = next(r for r in receiver.received if r.event == "refund.failed")
    assert signature_ok(failed.raw, failed.headers["X-Razorpay-Signature"])


async def test_refund_settled_by_control(http: ClientSession, receiver: Receiver) -> None:
    async with RazorpayTestServer(refund_delay_s=None) as rzp:
        rzp.add_account(KEY_ID, KEY_SECRET, WEBHOOK_SECRET, receiver.url)
        async with ClientSession(base_url=rzp.url, headers=auth(KEY_ID, KEY_SECRET)) as h:
            pay_id = await paid(h, rzp)
            async with await refund(h, pay_id, {"amount": 500}, "rf-ctl-0000001") as r:
                one = await r.json()
            async with await refund(h, pay_id, {"amount": 500}, "rf-ctl-0000002") as r:
                two = await r.json()
            assert rzp.state["refunds"][0]["status"] == "pending"
            async with h.post(f"/_test/refunds/{one['id']}/fail") as r:
                assert (await r.json())["status"] == "failed"
            async with h.post(f"/_test/refunds/{two['id']}/process") as r:
                assert (await r.json())["status"] == "processed"
            async with h.post(f"/_test/refunds/{two['id']}/fail") as r:
                await error_of(r)
            async with h.get(f"/v1/payments/{pay_id}/refunds/{two['id']}") as r:
                assert (await r.json())["status"] == "processed"


async def test_refund_answer_lost_after_commit(
    http: ClientSession, rzp: RazorpayTestServer
) -> None:
    """The provider made the refund but the answer was lost: a retry with the same key gets
    that refund, not a second one."""
    pay_id = await paid(http, rzp)
    rzp.set_faults("refund_create", "error_502", count=1, when="after")
    async with await refund(http, pay_id, {"amount": 700}, "rf-lost-000001") as r:
        await error_of(r, 502)
    async with await refund(http, pay_id, {"amount": 700}, "rf-lost-000001") as r:
        assert r.status == 200
    assert len(rzp.state["refunds"]) == 1


# -- controls over HTTP, pages ----------------------------------------------------------------


async def test_http_controls_and_pages(anon: ClientSession, receiver: Receiver) -> None:
    async with anon.post(
        "/_test/accounts",
        json={
            "key_id": "rzp_test_http",
            "key_secret": "http-secret",
            "webhook_secret": WEBHOOK_SECRET,
            "webhook_url": receiver.url,
        },
    ) as r:
        account = await r.json()
    assert account["key_id"] == "rzp_test_http" and account["account_id"].startswith("acc_")
    assert "key_secret" not in account
    creds = auth("rzp_test_http", "http-secret")
    async with anon.post("/v1/payments/qr_codes", json=qr_body(), headers=creds) as r:
        qr = await r.json()
    async with anon.get("/_test/") as r:
        assert qr["id"] in await r.text()
    async with anon.get(f"/_test/qr_codes/{qr['id']}") as r:
        assert "Pay ₹25.00" in await r.text()
    async with anon.post(f"/_test/qr_codes/{qr['id']}/pay", data={"go": "1"}) as r:
        assert "Paid ₹25.00" in await r.text()
    await receiver.wait_for(3)
    async with anon.get("/_test/state") as r:
        state = await r.json()
    assert state["payments"][0]["qr_code_id"] == qr["id"]
    assert state["qr_codes"][0]["close_reason"] == "paid"
    async with anon.get("/_test/webhooks?event=qr_code.credited") as r:
        (entry,) = (await r.json())["deliveries"]
    assert entry["event"] == "qr_code.credited" and entry["attempts"] >= 1
