"""UPI through the real Razorpay adapter, end to end: kiosk -> gateway -> cloud -> Razorpay test
server -> signed webhooks -> cloud -> gateway -> firmware, with the webhooks honest, forged,
duplicated, out of order and lost (the cloud's poll finds the payment)."""

import hashlib
import hmac
import json
from collections import Counter
from pathlib import Path

import aiohttp
from e2e_money import MoneySite, money_site

from tools.razorpay_server import RazorpayTestServer


async def test_upi_order_paid_by_qr_vends_and_the_cloud_records_it_once(
    upi_site: MoneySite,
) -> None:
    money = upi_site
    lobby, canteen = money.machines
    assert lobby.device is not None and canteen.device is not None

    order = await money.upi_order(lobby, {"A1": 2})
    payment = order["payment"]
    assert order["total_amount"] == 4000
    assert payment["status"] in ("created", "pending"), payment
    assert payment["upi_uri"].startswith("upi://pay?")
    qr = money.qr_code(payment["qr_code_id"])
    assert (qr["payment_amount"], qr["usage"], qr["fixed_amount"]) == (4000, "single_use", True)
    assert qr["notes"]["order_id"] == order["id"]

    paid = money.rzp.pay(payment["qr_code_id"])  # the customer's UPI app
    done = await money.site.finished(order["id"])
    assert done["status"] == "completed", done
    assert done["items"][0]["dispensed"] == 2
    assert done["refunds"] == [] and done["refund_amount"] == 0
    assert lobby.device.motor_runs() == 2  # once per unit
    assert canteen.device.motor_runs() == 0
    assert await money.site.kiosk_catalog(lobby) == {"A1": 3, "A2": 3}

    cloud_order = await money.site.synced(order["id"], "completed")
    assert cloud_order["payment_method"] == "upi" and cloud_order["total_amount"] == 4000
    payments = await money.cloud_payments(order["id"])
    assert [(p["status"], p["amount"]) for p in payments] == [("captured", 4000)]
    await money.all_webhooks_delivered()
    recorded = await money.provider_payments()
    assert [(p["id"], p["amount"], p["order_id"]) for p in recorded] == [
        (paid["id"], 4000, order["id"])
    ]
    assert await money.cloud_refunds(order["id"]) == []
    report = await money.reconciliation()
    assert report["verdict"] == "balanced", report["mismatches"]


def _sign(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def test_forged_or_tampered_webhooks_are_refused_and_change_nothing(
    upi_site: MoneySite,
) -> None:
    money = upi_site
    lobby = money.machines[0]
    assert lobby.device is not None
    order = await money.upi_order(lobby, {"A1": 1})
    qr_id = order["payment"]["qr_code_id"]

    # The customer pays, but Razorpay's webhooks are lost for now: we hold the real events.
    money.rzp.set_webhook_mode(drop=True)
    money.rzp.pay(qr_id)
    captured = next(d for d in money.rzp.deliveries if d.event == "payment.captured")
    headers = {"Content-Type": "application/json", "X-Razorpay-Event-Id": captured.event_id}
    tampered = json.loads(captured.body)
    tampered["payload"]["payment"]["entity"]["amount"] = 100
    tampered_body = json.dumps(tampered).encode()
    attempts = [
        (captured.body, _sign(captured.body, "not-the-webhook-secret")),  # forged
        (captured.body, ""),  # unsigned
        (tampered_body, captured.signature),  # signed, then changed on the way
        (tampered_body, _sign(captured.body, money.webhook_secret)),  # right key, other body
    ]
    async with aiohttp.ClientSession() as http:
        for body, signature in attempts:
            sent = headers | ({"X-Razorpay-Signature": signature} if signature else {})
            async with http.post(money.webhook_url, data=body, headers=sent) as response:
                assert response.status == 400, await response.text()
                assert (await response.json())["error"]["code"] == "invalid_signature"

    # Nothing moved: the order still waits for its money, no payment was recorded.
    assert (await money.site.kiosk_order(order["id"]))["status"] == "awaiting_payment"
    assert [p["status"] for p in await money.cloud_payments(order["id"])] == ["created"]
    assert await money.provider_payments() == []
    assert await money.provider_events() == []
    assert lobby.device.motor_runs() == 0

    # The genuine event with the same id is still applied: a refused forgery did not use it up.
    money.rzp.set_webhook_mode(drop=False)
    money.rzp.redeliver(captured.event_id)
    done = await money.site.finished(order["id"])
    assert done["status"] == "completed", done
    assert lobby.device.motor_runs() == 1
    assert [p["status"] for p in await money.cloud_payments(order["id"])] == ["captured"]


async def test_duplicate_and_reversed_webhooks_are_applied_once(upi_site: MoneySite) -> None:
    money = upi_site
    lobby, canteen = money.machines
    assert lobby.device is not None and canteen.device is not None
    # Every event three times, the copies racing the original, and each action's events in
    # reverse order (qr_code.closed first, payment.captured last).
    money.rzp.set_webhook_mode(duplicate=2, concurrent=True, reverse=True)

    first = await money.upi_order(lobby, {"A2": 1})
    second = await money.upi_order(canteen, {"A1": 1, "A2": 1})
    paid = [money.rzp.pay(o["payment"]["qr_code_id"]) for o in (first, second)]
    done = [await money.site.finished(o["id"]) for o in (first, second)]
    assert [d["status"] for d in done] == ["completed", "completed"], done
    assert lobby.device.motor_runs() == 1
    assert canteen.device.motor_runs() == 2

    await money.all_webhooks_delivered()
    # Each event reached the cloud three times at once, got a 2xx every time, was applied once.
    answers = {d.event_id: [a.status for a in d.attempts] for d in money.rzp.deliveries}
    assert len(answers) == 3 * 2, answers  # captured, credited, closed for each QR code
    assert all(statuses == [200, 200, 200] for statuses in answers.values()), answers
    events = await money.provider_events()
    assert Counter(e["id"] for e in events) == dict.fromkeys(answers, 1)
    recorded = await money.provider_payments()
    assert sorted((p["id"], p["amount"]) for p in recorded) == sorted(
        (p["id"], p["amount"]) for p in paid
    )
    for order, amount in ((first, 3500), (second, 5500)):
        payments = await money.cloud_payments(order["id"])
        assert [(p["status"], p["amount"]) for p in payments] == [("captured", amount)]
        assert await money.cloud_refunds(order["id"]) == []
    await money.site.synced(second["id"], "completed")
    report = await money.reconciliation()
    assert report["verdict"] == "balanced", report["mismatches"]


async def test_a_payment_whose_webhooks_are_lost_is_found_by_polling_and_vends(
    tmp_path: Path, rzp: RazorpayTestServer
) -> None:
    quick_poll = {"razorpay_poll_after_s": 0.5, "razorpay_poll_interval_s": 0.3}
    async with money_site(tmp_path, rzp, machines=["Lobby"], cloud_overrides=quick_poll) as money:
        lobby = money.machines[0]
        assert lobby.device is not None
        money.rzp.set_webhook_mode(drop=True)  # Razorpay never tells us
        order = await money.upi_order(lobby, {"A1": 1})
        paid = money.rzp.pay(order["payment"]["qr_code_id"])

        done = await money.site.finished(order["id"])
        assert done["status"] == "completed", done
        assert lobby.device.motor_runs() == 1
        assert {d.state for d in money.rzp.deliveries} == {"dropped"}
        [recorded] = await money.provider_payments()
        assert (recorded["id"], recorded["source"], recorded["order_id"]) == (
            paid["id"],
            "poll",
            order["id"],
        )

        # The webhooks turn up after all (redelivered): nothing happens twice.
        for delivery in money.rzp.deliveries:
            money.rzp.redeliver(delivery.event_id)
        await money.all_webhooks_delivered()
        assert len(await money.provider_payments()) == 1
        payments = await money.cloud_payments(order["id"])
        assert [(p["status"], p["amount"]) for p in payments] == [("captured", 2000)]
        assert await money.cloud_refunds(order["id"]) == []
        assert lobby.device.motor_runs() == 1
