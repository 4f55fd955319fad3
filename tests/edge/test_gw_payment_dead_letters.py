"""Payment confirmations the gateway cannot apply are kept as dead letters with the reason
(real store on SQLite, the real cloud link's channel handler, the real CLI), never dropped and
never applied by guesswork: the order is left as it was."""

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from gw_money_support import site_state
from gw_support import gateway_settings
from standalone_site import MachineCreds

from contracts.orders import OrderStatus, PaymentMethod
from contracts.sync import ChannelMessage, PaymentIntent, PaymentUpdate
from edge.settings import GatewaySettings
from edge.store import GatewayStore
from edge.store.views import NewOrder, NewOrderLine, OrderView
from edge.sync.client import CloudLink

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings(tmp_path: Path) -> GatewaySettings:
    return gateway_settings(tmp_path / "gw", cloud_url="http://127.0.0.1:9")


@pytest.fixture
async def store(
    settings: GatewaySettings, creds: dict[str, MachineCreds]
) -> AsyncIterator[GatewayStore]:
    async with GatewayStore(settings) as st:
        await st.apply_state(site_state(creds))
        yield st


async def upi_order(store: GatewayStore, key: str, machine_id: str = "M1") -> OrderView:
    line = NewOrderLine(f"{machine_id}-A1", 1)
    order, _ = await store.create_order(NewOrder(machine_id, (line,), PaymentMethod.UPI), None, key)
    return await store.attach_payment(
        PaymentIntent(
            payment_id=f"pay-{key}",
            order_id=order.id,
            provider="razorpay",
            status="created",
            amount=order.total_amount,
            currency=order.currency,
            qr_payload="upi://pay?pa=shop@bank&am=20.00",
            provider_ref=f"qr_{key}",
        )
    )


def update(order: OrderView, **overrides: Any) -> PaymentUpdate:
    assert order.payment is not None
    values: dict[str, Any] = {
        "payment_id": order.payment.payment_id,
        "order_id": order.id,
        "machine_id": order.machine_id,
        "status": "captured",
        "amount": order.total_amount,
        "currency": order.currency,
        "provider": "razorpay",
        "provider_payment_id": "pay_Rzp1",
    }
    return PaymentUpdate(**(values | overrides))


def channel(message_id: str, payment: PaymentUpdate) -> ChannelMessage:
    return ChannelMessage(
        id=message_id, type="payment.update", payload=payment.model_dump(mode="json")
    )


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", "dead-letters", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


async def test_payment_views_carry_the_provider_details(store: GatewayStore) -> None:
    order = await upi_order(store, "view-1")
    assert order.payment is not None
    assert order.payment.model_dump() == {
        "payment_id": "pay-view-1",
        "provider": "razorpay",
        "status": "created",
        "qr_code_id": "qr_view-1",
        "upi_uri": "upi://pay?pa=shop@bank&am=20.00",
        "image_url": None,
        "qr_payload": "upi://pay?pa=shop@bank&am=20.00",
    }
    await store.apply_payment_update("m-ok", update(order))
    paid = await store.get_order(order.id)
    assert paid.status is OrderStatus.PAID and paid.payment is not None
    assert paid.payment.status == "captured"
    rows = await store.query("SELECT provider_payment_id FROM payments")
    assert rows == [{"provider_payment_id": "pay_Rzp1"}]


async def test_unappliable_payments_become_dead_letters(
    store: GatewayStore, settings: GatewaySettings, tmp_path: Path
) -> None:
    link = CloudLink(settings, store)
    order = await upi_order(store, "dl-1")
    other = await upi_order(store, "dl-2", machine_id="M2")
    cash, _ = await store.create_order(
        NewOrder("M1", (NewOrderLine("M1-A2", 1),), PaymentMethod.CASH), None, "dl-3"
    )
    cases = {
        "m-1": update(order, order_id="0" * 32),
        "m-2": update(order, amount=1),
        "m-3": update(order, currency="USD"),
        "m-4": update(other, machine_id="M1"),
        "m-5": update(order, order_id=cash.id),
        "m-6": update(order, payment_id="pay-someone-else"),
    }
    for message_id, payment in cases.items():
        # The channel handler returns normally, so the message is acked: it is kept here.
        await link._handle(channel(message_id, payment))
    await link._handle(channel("m-2", cases["m-2"]))  # the cloud re-sent one: kept once
    letters = await store.list_dead_letters()
    assert [(x.event_id, x.source, x.type, x.code) for x in letters] == [
        ("payment:m-1", "payment", "payment.update", "unknown_order"),
        ("payment:m-2", "payment", "payment.update", "amount_mismatch"),
        ("payment:m-3", "payment", "payment.update", "currency_mismatch"),
        ("payment:m-4", "payment", "payment.update", "machine_mismatch"),
        ("payment:m-5", "payment", "payment.update", "not_electronic"),
        ("payment:m-6", "payment", "payment.update", "other_payment"),
    ]
    assert json.loads(letters[1].payload)["amount"] == 1
    assert "the order's total is 2000" in letters[1].error
    # Nothing was applied: the orders still wait for their payment, and no payment is recorded.
    for untouched in (order, other, cash):
        view = await store.get_order(untouched.id)
        assert (view.status, view.paid_amount) == (OrderStatus.AWAITING_PAYMENT, 0)
    assert await store.query("SELECT status FROM payments WHERE status = 'captured'") == []
    assert await store.dead_letter_count() == 6
    # No outbox event is made of them (they are not the cloud's to receive).
    assert not [e for e in await store.outbox_pending(1000) if e.type == "payment.update"]

    # The right confirmation still applies afterwards.
    await link._handle(channel("m-7", update(order)))
    assert (await store.get_order(order.id)).status is OrderStatus.PAID

    config = tmp_path / "gw.json"
    config.write_text(json.dumps({"data_dir": str(settings.data_dir)}))
    listed = cli(config, "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("payment confirmation not applied") == 6
    assert "m-2" in listed.stdout and "amount_mismatch" in listed.stdout
    refused = cli(config, "retry", str(letters[0].id))
    assert refused.returncode == 1 and "reconciliation" in refused.stderr
    nothing = cli(config, "retry", "--all")
    assert nothing.returncode == 0 and "no open dead letters" in nothing.stdout
    assert await store.dead_letter_count() == 6
