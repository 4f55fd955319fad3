"""Machine credit (cash with no coin return) on the real store and gateway: a cancel with coins
in, an overpayment and a jam all keep the cash as free credit, say so on the order, and write a
``credit.entry`` for every move with the balance after it."""

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gw_money_support import device, kiosk_order, money_gateway, outbox, site_state
from gw_support import gateway_settings
from polling import wait_for
from standalone_site import MachineCreds

from contracts.device_messages import CashCredit
from contracts.orders import OrderStatus, PaymentMethod
from contracts.sync import CreditEntry, MoneyPolicy
from edge.app import Gateway
from edge.store import GatewayStore, ledger, schema
from edge.store.dbthread import open_database
from edge.store.views import NewOrder, NewOrderLine


@pytest.fixture
async def store(tmp_path: Path, creds: dict[str, MachineCreds]) -> AsyncIterator[GatewayStore]:
    async with GatewayStore(gateway_settings(tmp_path)) as st:
        await st.apply_state(site_state(creds))
        yield st


def cash(item: str = "M1-A1", quantity: int = 1) -> NewOrder:
    return NewOrder("M1", (NewOrderLine(item, quantity),), PaymentMethod.CASH)


async def coin(store: GatewayStore, amount: int) -> str:
    credit = CashCredit(id=os.urandom(16).hex(), amount=amount, ts=int(time.time()))
    await store.record_cash_credit("M1", credit)
    return credit.id


async def entries(store: GatewayStore) -> list[tuple[str, int, int]]:
    """(reason, delta, balance) of every credit.entry event, oldest first; checks that they
    are the local entries and that they add up to the machine credit."""
    events = [e for e in await store.outbox_pending(1000) if e.type == "credit.entry"]
    local = await store.query("SELECT entry_id FROM credit_entries ORDER BY rowid")
    assert [e.payload["entry_id"] for e in events] == [row["entry_id"] for row in local]
    credit = await store.machine_credit("M1", "INR")
    assert sum(e.payload["delta"] for e in events) == credit
    if events:
        assert events[-1].payload["balance"] == credit
    return [(e.payload["reason"], e.payload["delta"], e.payload["balance"]) for e in events]


async def cash_adds_up(store: GatewayStore) -> None:
    """Cash received = cash kept by cash orders (paid minus given back) + free credit."""
    received = (await store.query("SELECT COALESCE(SUM(amount), 0) AS s FROM cash_credits"))[0]
    kept = (
        await store.query(
            "SELECT COALESCE(SUM(paid_amount - credit_amount), 0) AS s FROM orders "
            "WHERE payment_method = 'cash'"
        )
    )[0]
    assert received["s"] == kept["s"] + await store.machine_credit("M1", "INR")


async def test_cancel_with_coins_in_keeps_them_as_credit(store: GatewayStore) -> None:
    order, _ = await store.create_order(cash(), None, "a")
    credit_id = await coin(store, 1000)
    assert (await store.get_order(order.id)).paid_amount == 1000
    cancelled = await store.cancel_order(order.id)
    assert cancelled.status is OrderStatus.CANCELLED and cancelled.paid_amount == 0
    # The order says where the coins are: machine credit for the next cash order.
    assert cancelled.machine_credit == 1000
    assert cancelled.cancel_credit_amount == 1000  # what the kiosk says is kept as credit
    assert await entries(store) == [
        ("cash_in", 1000, 1000),
        ("order_payment", -1000, 0),
        ("order_cancelled", 1000, 1000),
    ]
    first = next(e for e in await store.outbox_pending(1000) if e.type == "credit.entry")
    assert (first.payload["credit_id"], first.payload["order_id"]) == (credit_id, order.id)
    await cash_adds_up(store)
    # The next cash order takes it.
    following, _ = await store.create_order(cash("M1-A2"), None, "b")
    assert following.paid_amount == 1000 and following.machine_credit == 0
    assert (await entries(store))[-1] == ("order_payment", -1000, 0)
    await cash_adds_up(store)


async def test_overpayment_is_kept_as_credit_and_said_so(store: GatewayStore) -> None:
    order, _ = await store.create_order(cash(), None, "a")
    await coin(store, 1500)
    await coin(store, 1000)
    paid = await store.get_order(order.id)
    assert paid.status is OrderStatus.PAID and paid.paid_amount == 2000
    assert (paid.overpaid_amount, paid.machine_credit) == (500, 500)
    assert await entries(store) == [
        ("cash_in", 1500, 1500),
        ("order_payment", -1500, 0),
        ("cash_in", 1000, 1000),
        ("order_payment", -500, 500),
    ]
    await cash_adds_up(store)
    # Credit inserted with no order open is not an overpayment of any order.
    await coin(store, 700)
    assert (await store.get_order(order.id)).overpaid_amount == 500
    assert (await entries(store))[-1] == ("cash_in", 700, 1200)


async def test_jam_on_a_cash_order_returns_its_value_to_credit(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    async with money_gateway(tmp_path / "gw", creds) as gw, device(gw, creds["M1"]) as dev:
        dev.jammed.add("A2")
        order = await kiosk_order(gw, {"M1-A1": 1, "M1-A2": 1}, "cash")
        await dev.insert_coin(4000)
        await _until(gw, order["id"], "partially_completed")
        view = await gw.store.get_order(order["id"])
        assert (view.paid_amount, view.credit_amount, view.refund_amount) == (4000, 2000, 0)
        assert view.refunds == [] and view.machine_credit == 2000
        assert await entries(gw.store) == [
            ("cash_in", 4000, 4000),
            ("order_payment", -4000, 0),
            ("undispensed", 2000, 2000),
        ]
        # The allocations still record which cash paid the order; the part given back is free.
        allocations = await gw.store.query(
            "SELECT amount, returned FROM cash_allocations WHERE order_id = ?", [order["id"]]
        )
        assert allocations == [{"amount": 4000, "returned": 2000}]
        await cash_adds_up(gw.store)
        snapshot = [s for s in await outbox(gw, "order.snapshot") if s["id"] == order["id"]][-1]
        assert (snapshot["status"], snapshot["credit_amount"]) == ("partially_completed", 2000)
        # The credit pays the next order at once.
        following = await kiosk_order(gw, {"M1-A1": 1}, "cash")
        assert following["paid_amount"] == 2000
        await _until(gw, following["id"], "completed")
        assert await gw.store.machine_credit("M1", "INR") == 0
        await cash_adds_up(gw.store)


async def test_late_answer_credits_a_held_cash_unit_once(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    """Under the ``review`` policy a cash unit with an unknown outcome is not credited at once;
    when the device answers late that it failed, the unit is credited, and only once."""
    policy = MoneyPolicy(unknown_outcome="review")
    async with (
        money_gateway(tmp_path / "gw", creds, policy=policy) as gw,
        device(gw, creds["M1"], silent=True) as dev,
    ):
        order = await kiosk_order(gw, {"M1-A1": 1}, "cash")
        await dev.insert_coin(2000)
        await _until(gw, order["id"], "failed")
        held = await gw.store.get_order(order["id"])
        assert (held.credit_amount, held.machine_credit) == (0, 0)
        await dev.answer_late(dev.received[0], "failed")

        async def credited() -> bool:
            return (await gw.store.get_order(order["id"])).credit_amount == 2000

        await wait_for(credited)
        [command] = await gw.store.query("SELECT cmd_id FROM dispense_commands")
        dev.acked.clear()
        await dev.answer_late(dev.received[0], "failed")  # the device sends it again

        async def acked() -> bool:
            return command["cmd_id"] in dev.acked

        await wait_for(acked)
        final = await gw.store.get_order(order["id"])
        assert (final.credit_amount, final.machine_credit) == (2000, 2000)
        assert [reason for reason, _, _ in await entries(gw.store)].count("undispensed") == 1
        await cash_adds_up(gw.store)


async def _until(gw: Gateway, order_id: str, status: str) -> None:
    async def reached() -> bool:
        return (await gw.store.get_order(order_id)).status.value == status

    await wait_for(reached, within=20)


def test_upgrade_opens_the_credit_a_machine_already_held(tmp_path: Path) -> None:
    """A gateway upgraded to credit entries starts them with the credit its machines held (one
    opening cash_in each), so the cloud's sum of deltas is the balance from the first event."""
    db = open_database(tmp_path / "old.sqlite3")
    db.execute("PRAGMA foreign_keys = OFF")  # no machines table rows needed for this
    schema.m001_initial(db)
    schema.m002_cash_allocations(db)
    db.execute(
        "INSERT INTO orders (id, machine_id, status, payment_method, total_amount, paid_amount, "
        "currency, created_at, updated_at, version) VALUES "
        "('o1', 'M1', 'completed', 'cash', 2000, 2000, 'INR', 'now', 'now', 3)"
    )
    for credit_id, machine_id, amount in (("c1", "M1", 3000), ("c2", "M2", 500), ("c3", "M1", 0)):
        db.execute(
            "INSERT INTO cash_credits (id, machine_id, amount, currency, received_at) "
            "VALUES (?, ?, ?, 'INR', 'now')",
            [credit_id, machine_id, amount],
        )
    db.execute(
        "INSERT INTO cash_allocations (credit_id, order_id, amount, allocated_at) "
        "VALUES ('c1', 'o1', 2000, 'now')"
    )
    schema.m007_money(db)
    entries = {
        row["machine_id"]: (row["delta"], row["balance"], row["reason"])
        for row in db.execute("SELECT * FROM credit_entries").fetchall()
    }
    assert entries == {"M1": (1000, 1000, "cash_in"), "M2": (500, 500, "cash_in")}
    events = [
        CreditEntry.model_validate_json(row["payload"])
        for row in db.execute("SELECT payload FROM outbox WHERE type = 'credit.entry'").fetchall()
    ]
    assert sorted((e.machine_id, e.delta) for e in events) == [("M1", 1000), ("M2", 500)]
    assert ledger.machine_credit(db, "M1", "INR") == 1000
    db.close()
