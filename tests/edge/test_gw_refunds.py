"""Refunds the gateway decides, on the real gateway (SQLite, amqtt) with a device double: exactly
the units that did not come out, once, whatever is replayed or restarted; unknown outcomes per
the tenant's policy; a payment on a cancelled order; refund status from the cloud's channel."""

from pathlib import Path

from gw_money_support import (
    captured,
    device,
    kiosk_get,
    kiosk_order,
    money_gateway,
    outbox,
    until_terminal,
)
from gw_support import PaymentsDouble
from polling import wait_for
from standalone_site import MachineCreds

from contracts.orders import RefundReason, RefundStatus
from contracts.sync import ChannelMessage, MoneyPolicy, RefundUpdate
from edge.app import Gateway
from edge.store.views import RefundView
from edge.sync.client import CloudLink


async def _refund_rows(gateway: Gateway) -> list[dict[str, object]]:
    return await gateway.store.query(
        "SELECT refund_id, order_id, payment_id, amount, reason, hold, status FROM refunds "
        "ORDER BY refund_id"
    )


async def test_one_jammed_unit_of_three_is_refunded_once(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    async with money_gateway(tmp_path / "gw", creds) as gw:
        async with device(gw, creds["M1"]) as dev:
            dev.jammed.add("A2")
            order = await kiosk_order(gw, {"M1-A1": 2, "M1-A2": 1})
            update = captured(order)
            await gw.store.apply_payment_update("chan-1", update)
            assert await until_terminal(gw, order["id"]) == "partially_completed"
            assert len(dev.motor_runs) == 3
        view = await gw.store.get_order(order["id"])
        refund_id = f"rf-{order['id']}-undispensed"
        # Exactly the jammed unit's price, no more.
        assert view.refund_amount == 2000 and view.credit_amount == 0
        assert view.refunds == [
            RefundView(
                refund_id=refund_id,
                amount=2000,
                status=RefundStatus.PENDING,
                reason=RefundReason.UNDISPENSED,
            )
        ]
        requests = await outbox(gw, "refund.request")
        assert requests == [
            {
                "refund_id": refund_id,
                "order_id": order["id"],
                "machine_id": "M1",
                "payment_id": update.payment_id,
                "amount": 2000,
                "currency": "INR",
                "reason": "undispensed",
                "hold": False,
            }
        ]
        # The order snapshot that ended it carries the refund, in the same transaction.
        final = [s for s in await outbox(gw, "order.snapshot") if s["id"] == order["id"]][-1]
        assert (final["status"], final["refund_amount"]) == ("partially_completed", 2000)
        # The kiosk's order JSON shows it.
        status, body = await kiosk_get(gw, f"/api/v1/orders/{order['id']}")
        assert status == 200
        assert body["data"]["refund_amount"] == 2000
        version = view.version
        # Replays of the payment confirmation (same and new message id) change nothing.
        await gw.store.apply_payment_update("chan-1", update)
        await gw.store.apply_payment_update("chan-2", update)
        assert (await gw.store.get_order(order["id"])).version == version

    # After a restart nothing is decided again.
    async with money_gateway(tmp_path / "gw", creds, load=False) as gw:
        await gw.store.apply_payment_update("chan-3", update)
        assert len(await outbox(gw, "refund.request")) == 1
        assert len(await _refund_rows(gw)) == 1
        again = await gw.store.get_order(order["id"])
        assert (again.status.value, again.refund_amount, again.version) == (
            "partially_completed",
            2000,
            version,
        )


async def test_nothing_dispensed_is_failed_with_a_full_refund(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    async with money_gateway(tmp_path / "gw", creds) as gw, device(gw, creds["M1"]) as dev:
        dev.jammed.add("A1")
        order = await kiosk_order(gw, {"M1-A1": 2})
        await gw.store.apply_payment_update("chan-1", captured(order))
        assert await until_terminal(gw, order["id"]) == "failed"
        view = await gw.store.get_order(order["id"])
        assert view.refund_amount == view.total_amount == 4000
        assert [(r["refund_id"], r["amount"], r["status"]) for r in await _refund_rows(gw)] == [
            (f"rf-{order['id']}-undispensed", 4000, "pending")
        ]
        assert await gw.store.stock("M1-A1") == (5, 0)  # both units still in the slot


async def test_unknown_outcome_is_refunded_under_the_refund_policy(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    async with (
        money_gateway(tmp_path / "gw", creds) as gw,
        device(gw, creds["M1"], silent=True) as dev,
    ):
        order = await kiosk_order(gw, {"M1-A1": 1})
        await gw.store.apply_payment_update("chan-1", captured(order))
        assert await until_terminal(gw, order["id"]) == "failed"
        view = await gw.store.get_order(order["id"])
        assert view.items[0].unknown == 1
        assert [(r.refund_id, r.amount, r.status) for r in view.refunds] == [
            (f"rf-{order['id']}-undispensed", 2000, RefundStatus.PENDING)
        ]
        # The device answers after all: the unit came out. The refund was already requested
        # and stands (the money may be on its way back); nothing new is invented.
        await dev.answer_late(dev.received[0], "ok")

        async def corrected() -> bool:
            return (await gw.store.get_order(order["id"])).items[0].dispensed == 1

        await wait_for(corrected)
        late = await gw.store.get_order(order["id"])
        assert late.status.value == "completed"  # what came out
        assert late.refund_amount == 2000 and len(late.refunds) == 1
        assert len(await outbox(gw, "refund.request")) == 1


async def test_unknown_outcome_is_held_for_review_under_the_review_policy(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    policy = MoneyPolicy(unknown_outcome="review")
    async with (
        money_gateway(tmp_path / "gw", creds, policy=policy) as gw,
        device(gw, creds["M1"], silent=True),
    ):
        assert (await gw.store.money_policy("M1")).unknown_outcome == "review"
        order = await kiosk_order(gw, {"M1-A1": 1})
        await gw.store.apply_payment_update("chan-1", captured(order))
        assert await until_terminal(gw, order["id"]) == "failed"
        view = await gw.store.get_order(order["id"])
        assert view.refund_amount == 2000
        assert [(r.refund_id, r.status) for r in view.refunds] == [
            (f"rf-{order['id']}-held", RefundStatus.MANUAL_REVIEW)
        ]
        [request] = await outbox(gw, "refund.request")
        assert (request["refund_id"], request["hold"], request["amount"]) == (
            f"rf-{order['id']}-held",
            True,
            2000,
        )


async def test_payment_after_cancel_is_refunded_whole_and_once(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    async with money_gateway(tmp_path / "gw", creds) as gw:
        order = await kiosk_order(gw, {"M1-A1": 2})
        await gw.store.cancel_order(order["id"])
        update = captured(order)
        await gw.store.apply_payment_update("chan-1", update)
        await gw.store.apply_payment_update("chan-2", update)  # the cloud sent it again
        view = await gw.store.get_order(order["id"])
        assert view.status.value == "cancelled"  # nothing was, or will be, dispensed
        assert (view.paid_amount, view.refund_amount) == (4000, 4000)
        assert view.payment is not None and view.payment.payment_id == update.payment_id
        refund_id = f"rf-{update.payment_id}-unserved"
        assert [(r.refund_id, r.amount, r.reason) for r in view.refunds] == [
            (refund_id, 4000, RefundReason.UNSERVED)
        ]
        requests = await outbox(gw, "refund.request")
        assert [(r["refund_id"], r["amount"], r["reason"]) for r in requests] == [
            (refund_id, 4000, "unserved")
        ]
        assert await gw.store.stock("M1-A1") == (5, 0)


async def test_duplicate_payment_update_is_applied_once(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    async with money_gateway(tmp_path / "gw", creds) as gw, device(gw, creds["M1"]) as dev:
        order = await kiosk_order(gw, {"M1-A1": 1})
        update = captured(order)
        await gw.store.apply_payment_update("chan-1", update)
        await gw.store.apply_payment_update("chan-1", update)
        await gw.store.apply_payment_update("chan-9", update)
        assert await until_terminal(gw, order["id"]) == "completed"
        view = await gw.store.get_order(order["id"])
        assert view.paid_amount == 2000 and view.refunds == []
        assert len(dev.motor_runs) == 1
        payments = await gw.store.query("SELECT payment_id, status FROM payments")
        assert payments == [{"payment_id": update.payment_id, "status": "captured"}]


async def test_refund_updates_from_the_channel_move_forward_only(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    payments = PaymentsDouble()
    async with money_gateway(tmp_path / "gw", creds, payments=payments) as gw:
        order = await kiosk_order(gw, {"M1-A1": 1})
        await gw.store.cancel_order(order["id"])
        update = captured(order)
        await gw.store.apply_payment_update("chan-1", update)
        refund_id = f"rf-{update.payment_id}-unserved"
        # The channel handler of the real cloud link, on the real store (not connected).
        link = CloudLink(
            gw.settings.model_copy(update={"cloud_url": "http://127.0.0.1:9"}), gw.store
        )

        def message(message_id: str, status: RefundStatus, rid: str = refund_id) -> ChannelMessage:
            refund = RefundUpdate(
                refund_id=rid,
                order_id=order["id"],
                payment_id=update.payment_id,
                amount=2000,
                currency="INR",
                status=status,
                provider_refund_id="rfnd_1" if status is RefundStatus.REFUNDED else None,
            )
            return ChannelMessage(
                id=message_id, type="refund.update", payload=refund.model_dump(mode="json")
            )

        async def status_of(rid: str = refund_id) -> str:
            rows = await gw.store.query("SELECT status FROM refunds WHERE refund_id = ?", [rid])
            return str(rows[0]["status"])

        await link._handle(message("r-1", RefundStatus.FAILED))
        assert await status_of() == "failed"
        await link._handle(message("r-2", RefundStatus.REFUNDED))
        assert await status_of() == "refunded"
        # A late, out-of-order message never moves a refunded one back; a replay is a no-op.
        await link._handle(message("r-3", RefundStatus.PENDING))
        await link._handle(message("r-1", RefundStatus.FAILED))
        assert await status_of() == "refunded"
        view = await gw.store.get_order(order["id"])
        assert [(r.refund_id, r.status) for r in view.refunds] == [
            (refund_id, RefundStatus.REFUNDED)
        ]
        rows = await gw.store.query("SELECT provider_refund_id FROM refunds")
        assert rows == [{"provider_refund_id": "rfnd_1"}]
        # A refund the cloud decided by itself for this order is listed with it, but it is not
        # money this order asked back (refund_amount stays the gateway's own requests).
        duplicate = "rf-pay_other_1-duplicate"
        await link._handle(message("r-4", RefundStatus.PENDING, duplicate))
        view = await gw.store.get_order(order["id"])
        assert {r.refund_id: r.reason for r in view.refunds} == {
            refund_id: RefundReason.UNSERVED,
            duplicate: RefundReason.DUPLICATE,
        }
        assert view.refund_amount == 2000
