"""Cash on a real store (SQLite): one open cash order per machine, overpayment kept as credit."""

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gw_support import gateway_settings, make_machine
from standalone_site import MachineCreds

from contracts.device_messages import CashCredit
from contracts.orders import OrderStatus, PaymentMethod
from contracts.sync import StateResponse
from edge.errors import InsufficientStock, MachineBusy, OrderConflict
from edge.store import GatewayStore
from edge.store.views import NewOrder, NewOrderLine


@pytest.fixture
async def store(tmp_path: Path, creds: dict[str, MachineCreds]) -> AsyncIterator[GatewayStore]:
    async with GatewayStore(gateway_settings(tmp_path)) as st:
        await st.apply_state(
            StateResponse(
                cursor=1, machines=[make_machine("M1", creds["M1"], stock={"A1": 5, "A2": 1})]
            )
        )
        yield st


def order(
    item: str = "M1-A1", quantity: int = 1, method: PaymentMethod = PaymentMethod.CASH
) -> NewOrder:
    return NewOrder("M1", (NewOrderLine(item, quantity),), method)


async def coin(store: GatewayStore, amount: int) -> str | None:
    credit = CashCredit(id=os.urandom(16).hex(), amount=amount, ts=int(time.time()))
    return (await store.record_cash_credit("M1", credit)).order_id


async def cancel_reason(store: GatewayStore, order_id: str) -> str | None:
    rows = await store.query("SELECT cancel_reason FROM orders WHERE id = ?", [order_id])
    return rows[0]["cancel_reason"]  # type: ignore[no-any-return]


async def assert_cash_adds_up(store: GatewayStore) -> int:
    """Credits received = cash applied to orders + machine credit; returns the machine credit."""
    received = (await store.query("SELECT COALESCE(SUM(amount), 0) AS s FROM cash_credits"))[0]
    applied = (
        await store.query(
            "SELECT COALESCE(SUM(paid_amount), 0) AS s FROM orders WHERE payment_method = 'cash'"
        )
    )[0]
    allocated = (await store.query("SELECT COALESCE(SUM(amount), 0) AS s FROM cash_allocations"))[0]
    credit = await store.machine_credit("M1", "INR")
    assert applied["s"] == allocated["s"]
    assert received["s"] == applied["s"] + credit
    assert credit >= 0
    return credit


async def test_new_cash_order_supersedes_an_unpaid_one(store: GatewayStore) -> None:
    abandoned, _ = await store.create_order(order("M1-A2"), None, "a")
    assert await store.stock("M1-A2") == (1, 1)
    # The only unit is held by the abandoned order, yet the new one gets it: the old order is
    # cancelled (and its stock released) in the same transaction, before the stock check.
    current, created = await store.create_order(order("M1-A2"), None, "b")
    assert created and current.status is OrderStatus.AWAITING_PAYMENT
    old = await store.get_order(abandoned.id)
    assert old.status is OrderStatus.CANCELLED
    assert old.items[0].dispense_status.value == "not_dispensed"
    assert await cancel_reason(store, abandoned.id) == "superseded"
    assert await store.stock("M1-A2") == (1, 1)
    snapshots = [
        e.payload
        for e in await store.outbox_pending(1000)
        if e.type == "order.snapshot" and e.payload["id"] == abandoned.id
    ]
    assert snapshots[-1]["status"] == "cancelled"
    # The customer's coins pay the current order, not the abandoned one.
    assert await coin(store, 2000) == current.id
    assert (await store.get_order(current.id)).status is OrderStatus.PAID
    assert (await store.get_order(abandoned.id)).paid_amount == 0
    assert await assert_cash_adds_up(store) == 0


async def test_supersede_is_rolled_back_with_a_refused_order(store: GatewayStore) -> None:
    first, _ = await store.create_order(order("M1-A2"), None, "a")
    with pytest.raises(InsufficientStock):
        await store.create_order(order("M1-A1", 6), None, "b")
    assert (await store.get_order(first.id)).status is OrderStatus.AWAITING_PAYMENT
    assert await store.stock("M1-A2") == (1, 1)


async def test_cash_order_being_paid_refuses_a_new_one(store: GatewayStore) -> None:
    paying, _ = await store.create_order(order(quantity=2), None, "a")
    assert await coin(store, 1000) == paying.id
    with pytest.raises(MachineBusy) as refused:
        await store.create_order(order("M1-A2"), None, "b")
    assert isinstance(refused.value, OrderConflict)  # answered with 409
    assert await store.stock("M1-A2") == (1, 0)  # the refused order left nothing behind
    # Other payment methods do not take coins, so they are not blocked.
    _, created = await store.create_order(order(method=PaymentMethod.SANDBOX), None, "c")
    assert created
    # The customer mid-payment keeps the order and the next coins finish it.
    assert await coin(store, 3000) == paying.id
    paid = await store.get_order(paying.id)
    assert (paid.status, paid.paid_amount) == (OrderStatus.PAID, 4000)
    # Once it is paid the machine takes a new cash order again.
    _, created = await store.create_order(order("M1-A2"), None, "d")
    assert created
    assert await assert_cash_adds_up(store) == 0


async def test_idempotent_replay_returns_the_same_order(store: GatewayStore) -> None:
    first, created = await store.create_order(order(), "key-1", "h1")
    assert created
    assert await coin(store, 500) == first.id
    again, created = await store.create_order(order(), "key-1", "h1")  # no MachineBusy
    assert not created and again.id == first.id and again.paid_amount == 500
    await store.cancel_order(first.id)
    assert await cancel_reason(store, first.id) == "requested"
    assert await store.machine_credit("M1", "INR") == 500  # no coin return
    second, created = await store.create_order(order(), "key-2", "h2")
    assert created and second.paid_amount == 500  # the credit pays the next cash order
    third, _ = await store.create_order(order(method=PaymentMethod.SANDBOX), "key-3", "h3")
    replay, created = await store.create_order(order(), "key-2", "h2")
    assert not created and replay.id == second.id
    assert third.id != second.id
    assert await assert_cash_adds_up(store) == 0


async def test_overpayment_stays_as_machine_credit(store: GatewayStore) -> None:
    first, _ = await store.create_order(order(), None, "a")
    assert first.total_amount == 2000
    assert await coin(store, 2500) == first.id
    paid = await store.get_order(first.id)
    assert (paid.status, paid.paid_amount) == (OrderStatus.PAID, 2000)
    assert await assert_cash_adds_up(store) == 500
    # The next cash order is paid partly from the 500 left over, then by new coins.
    second, _ = await store.create_order(order(), None, "b")
    assert (second.status, second.paid_amount) == (OrderStatus.AWAITING_PAYMENT, 500)
    assert await assert_cash_adds_up(store) == 0
    assert await coin(store, 1000) == second.id
    assert (await store.get_order(second.id)).paid_amount == 1500
    assert await coin(store, 1000) == second.id
    done = await store.get_order(second.id)
    assert (done.status, done.paid_amount) == (OrderStatus.PAID, 2000)
    assert await assert_cash_adds_up(store) == 500
    # 4500 in: 2000 + 2000 paid orders, 500 still on the machine.
    assert [c["s"] for c in await store.query("SELECT SUM(amount) AS s FROM cash_credits")] == [
        4500
    ]


async def test_credit_before_the_order_never_overshoots(store: GatewayStore) -> None:
    for amount in (1500, 1500, 5000):
        assert await coin(store, amount) is None  # no open order: machine credit
    assert await assert_cash_adds_up(store) == 8000
    first, _ = await store.create_order(order(), None, "a")
    assert (first.status, first.paid_amount) == (OrderStatus.PAID, 2000)
    assert await assert_cash_adds_up(store) == 6000
    second, _ = await store.create_order(order(quantity=4), None, "b")
    assert (second.status, second.paid_amount) == (OrderStatus.AWAITING_PAYMENT, 6000)
    # Cancelling gives its cash back to the machine, all of it (split credits included).
    cancelled = await store.cancel_order(second.id)
    assert cancelled.paid_amount == 0
    assert await assert_cash_adds_up(store) == 6000
    third, _ = await store.create_order(order(quantity=2), None, "c")
    assert (third.status, third.paid_amount) == (OrderStatus.PAID, 4000)
    assert await assert_cash_adds_up(store) == 2000
