"""Refunds through the real Razorpay adapter, end to end: a payment that lands on a cancelled
or expired order, a jammed unit of a UPI order, and a refund whose first tries meet provider
errors (one of them made at the provider with its answer lost). Each ends with exactly one
refund, processed at the Razorpay test server, and the kiosk showing it."""

from pathlib import Path
from typing import Any

import pytest
from e2e_money import MoneySite, money_site

from tools.razorpay_server import RazorpayTestServer


def _provider_refunds(money: MoneySite) -> list[tuple[str, int, str, str]]:
    return sorted(
        (r["payment_id"], r["amount"], r["status"], r["notes"]["refund_id"])
        for r in money.refunds_at_provider()
    )


async def _refund_processed(money: MoneySite, count: int = 1) -> None:
    def processed() -> bool:
        refunds = money.refunds_at_provider()
        return len(refunds) == count and all(r["status"] == "processed" for r in refunds)

    await money.rzp.wait_until(processed, within=20)


async def _qr_closed(money: MoneySite, qr_id: str) -> None:
    await money.rzp.wait_until(lambda: money.qr_code(qr_id)["status"] == "closed", within=20)


@pytest.mark.parametrize("how", ["after_the_qr_closed", "webhooks_held_until_after_cancel"])
async def test_a_payment_landing_on_a_cancelled_order_is_refunded_once(
    upi_site: MoneySite, how: str
) -> None:
    money = upi_site
    lobby = money.machines[0]
    assert lobby.device is not None
    order = await money.upi_order(lobby, {"A2": 1})
    qr_id = order["payment"]["qr_code_id"]

    if how == "after_the_qr_closed":
        # The customer walks away; the cloud closes the QR code; the UPI app pays it anyway.
        cancelled = await money.cancel(order)
        assert cancelled["status"] == "cancelled" and cancelled["refunds"] == []
        await money.site.synced(order["id"], "cancelled")
        await _qr_closed(money, qr_id)
        paid = money.rzp.pay(qr_id, allow_closed=True)
    else:
        # Paid in time, but Razorpay's webhooks are late: the kiosk gives up first.
        money.rzp.set_webhook_mode(hold=True)
        paid = money.rzp.pay(qr_id)
        cancelled = await money.cancel(order)
        assert cancelled["status"] == "cancelled"
        await money.site.synced(order["id"], "cancelled")
        money.rzp.set_webhook_mode(hold=False)
        assert money.rzp.release_webhooks() == 3

    await _unserved_refund_made_once(money, order, paid)


async def test_a_payment_landing_on_an_expired_order_is_refunded_once(
    tmp_path: Path, rzp: RazorpayTestServer
) -> None:
    short = {"order_payment_timeout_s": 1.0}
    async with money_site(tmp_path, rzp, machines=["Lobby"], gateway_overrides=short) as money:
        order = await money.upi_order(money.machines[0], {"A2": 1})
        expired = await money.site.finished(order["id"])  # nobody paid within the timeout
        assert expired["status"] == "cancelled" and expired["refunds"] == []
        await money.site.synced(order["id"], "cancelled")
        qr_id = order["payment"]["qr_code_id"]
        await _qr_closed(money, qr_id)
        paid = money.rzp.pay(qr_id, allow_closed=True)
        await _unserved_refund_made_once(money, order, paid)


async def _unserved_refund_made_once(
    money: MoneySite, order: dict[str, Any], paid: dict[str, Any]
) -> None:
    """The whole payment of an order that ended unpaid comes back once, and is shown."""
    lobby = money.machines[0]
    assert lobby.device is not None
    refund_id = f"rf-{order['payment']['payment_id']}-unserved"
    await _refund_processed(money)
    assert _provider_refunds(money) == [(paid["id"], 3500, "processed", refund_id)]
    [refund] = await money.cloud_refunded(order["id"])
    assert (refund["id"], refund["amount"], refund["provider_payment_id"]) == (
        refund_id,
        3500,
        paid["id"],
    )

    shown = await money.kiosk_refunds(order["id"], "refunded")
    assert shown["status"] == "cancelled"  # nothing was sold
    assert [(r["refund_id"], r["amount"]) for r in shown["refunds"]] == [(refund_id, 3500)]
    assert shown["refund_amount"] == 3500
    assert lobby.device.motor_runs() == 0
    assert await money.site.kiosk_catalog(lobby) == {"A1": 5, "A2": 3}

    await money.all_webhooks_delivered()
    assert len(money.refunds_at_provider()) == 1  # nobody refunded it a second time
    report = await money.reconciliation()
    assert report["verdict"] == "balanced", report["mismatches"]


async def test_jammed_unit_of_a_upi_order_is_refunded_exactly(upi_site: MoneySite) -> None:
    money = upi_site
    lobby = money.machines[0]
    assert lobby.device is not None
    await lobby.device.sim("jam", slot="A2", on=True)

    order = await money.upi_order(lobby, {"A1": 1, "A2": 1})
    assert order["total_amount"] == 5500
    paid = money.rzp.pay(order["payment"]["qr_code_id"])
    done = await money.site.finished(order["id"])
    assert done["status"] == "partially_completed", done
    items = {item["slot"]: item for item in done["items"]}
    assert (items["A1"]["dispensed"], items["A2"]["failed"]) == (1, 1)
    assert lobby.device.motor_runs() == 2  # one unit each; the jammed one is not tried again

    refund_id = f"rf-{order['id']}-undispensed"
    await _refund_processed(money)
    assert _provider_refunds(money) == [(paid["id"], 3500, "processed", refund_id)]
    shown = await money.kiosk_refunds(order["id"], "refunded")
    assert [(r["refund_id"], r["amount"], r["reason"]) for r in shown["refunds"]] == [
        (refund_id, 3500, "undispensed")
    ]
    assert shown["refund_amount"] == 3500 and shown["status"] == "partially_completed"

    [refund] = await money.cloud_refunded(order["id"])
    assert (refund["id"], refund["amount"], refund["source"]) == (refund_id, 3500, "gateway")
    cloud_order = await money.site.synced(order["id"], "partially_completed")
    assert cloud_order["refund_amount"] == 3500
    payment = next(p for p in money.rzp.state["payments"] if p["id"] == paid["id"])
    assert (payment["amount_refunded"], payment["refund_status"]) == (3500, "partial")


async def _failed_upi_order(money: MoneySite) -> tuple[dict[str, Any], dict[str, Any]]:
    """A UPI order for one unit of a jammed slot: paid, nothing dispensed, all to refund."""
    lobby = money.machines[0]
    assert lobby.device is not None
    await lobby.device.sim("jam", slot="A1", on=True)
    order = await money.upi_order(lobby, {"A1": 1})
    paid = money.rzp.pay(order["payment"]["qr_code_id"])
    done = await money.site.finished(order["id"])
    assert done["status"] == "failed", done
    return order, paid


@pytest.mark.parametrize("lost_answer", [False, True], ids=["errors", "errors_then_lost_answer"])
async def test_refund_retried_after_provider_errors_is_made_once(
    upi_site: MoneySite, lost_answer: bool
) -> None:
    money = upi_site
    # The provider fails the first two refund calls outright; then (lost_answer) it makes the
    # refund but its answer is lost, and the retry with the same idempotency key gets it back.
    money.rzp.set_faults("refund_create", "error_503", count=2)
    if lost_answer:
        money.rzp.set_faults("refund_create", "error_503", count=1, when="after")
    order, paid = await _failed_upi_order(money)

    refund_id = f"rf-{order['id']}-undispensed"
    [refund] = await money.cloud_refunded(order["id"], within=30)
    assert (refund["id"], refund["amount"]) == (refund_id, 2000)
    assert money.rzp.faults == []  # every injected failure was met
    await _refund_processed(money)
    assert _provider_refunds(money) == [(paid["id"], 2000, "processed", refund_id)]
    shown = await money.kiosk_refunds(order["id"], "refunded")
    assert [(r["refund_id"], r["amount"]) for r in shown["refunds"]] == [(refund_id, 2000)]

    # The cloud keeps it refunded once every webhook is in; nothing tries it again.
    await money.all_webhooks_delivered()
    assert [r["status"] for r in await money.cloud_refunds(order["id"])] == ["refunded"]
    assert len(money.refunds_at_provider()) == 1
