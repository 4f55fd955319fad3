"""The store: outbox written with the change, outbox acks, state pulls, payments, one writer."""

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gw_support import gateway_settings, make_machine
from standalone_site import MachineCreds

from contracts.orders import OrderStatus, PaymentMethod
from contracts.sync import PaymentIntent, PaymentUpdate, StateResponse
from edge.errors import InsufficientStock, OrderConflict
from edge.store import GatewayStore
from edge.store.views import NewOrder, NewOrderLine


@pytest.fixture
async def store(tmp_path: Path, creds: dict[str, MachineCreds]) -> AsyncIterator[GatewayStore]:
    async with GatewayStore(gateway_settings(tmp_path)) as st:
        await st.apply_state(
            StateResponse(
                cursor=7, machines=[make_machine("M1", creds["M1"], stock={"A1": 5, "A2": 1})]
            )
        )
        yield st


def cash_order(quantity: int = 1, item: str = "M1-A1") -> NewOrder:
    return NewOrder("M1", (NewOrderLine(item, quantity),), PaymentMethod.CASH)


def sandbox_order(quantity: int = 1, item: str = "M1-A1") -> NewOrder:
    """Several of these can be open on one machine (only one cash order can)."""
    return NewOrder("M1", (NewOrderLine(item, quantity),), PaymentMethod.SANDBOX)


async def outbox_types(store: GatewayStore) -> list[str]:
    return [e.type for e in await store.outbox_pending(1000)]


async def test_order_and_its_snapshot_commit_together(store: GatewayStore) -> None:
    order, created = await store.create_order(cash_order(2), None, "h")
    assert created and order.status is OrderStatus.AWAITING_PAYMENT and order.version == 1
    assert order.total_amount == 4000
    events = await store.outbox_pending(100)
    snapshot = [e for e in events if e.type == "order.snapshot"]
    assert len(snapshot) == 1
    assert snapshot[0].payload["id"] == order.id and snapshot[0].payload["version"] == 1
    assert await store.stock("M1-A1") == (5, 2)


async def test_failed_order_leaves_no_trace(store: GatewayStore) -> None:
    with pytest.raises(InsufficientStock):
        await store.create_order(
            NewOrder(
                "M1", (NewOrderLine("M1-A1", 1), NewOrderLine("M1-A2", 2)), PaymentMethod.CASH
            ),
            None,
            "h",
        )
    assert await outbox_types(store) == []
    assert await store.stock("M1-A1") == (5, 0)
    assert await store.query("SELECT * FROM orders") == []


async def test_outbox_ack_by_high_water_mark(store: GatewayStore) -> None:
    for _ in range(3):
        await store.create_order(sandbox_order(), None, "h")
    events = await store.outbox_pending(100)
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert await store.outbox_backlog() == 3
    await store.outbox_acknowledged(events[1].seq)
    remaining = await store.outbox_pending(100)
    assert [e.seq for e in remaining] == [events[2].seq]
    assert await store.outbox_backlog() == 1
    await store.outbox_acknowledged(events[1].seq)  # replayed ack: no change
    assert await store.outbox_backlog() == 1


async def test_wait_outbox_wakes_on_new_event(store: GatewayStore) -> None:
    waiter = asyncio.create_task(store.wait_outbox(5.0))
    await asyncio.sleep(0)
    await store.create_order(cash_order(), None, "h")
    async with asyncio.timeout(2):
        await waiter


async def test_apply_state_upserts_and_respects_stock_rev(
    store: GatewayStore, creds: dict[str, MachineCreds]
) -> None:
    assert await store.state_cursor() == 7
    order, _ = await store.create_order(cash_order(), None, "h")
    assert (await store.record_timeout("M1", "nothing")).status == "unknown_command"
    # A sale happened locally (quantity 5 -> 4) that the cloud has not seen yet.
    await store.query("SELECT 1")
    await store._writer.run(
        lambda db: db.execute("UPDATE catalog SET quantity = 4 WHERE id='M1-A1'")
    )
    same_rev = make_machine("M1", creds["M1"], stock={"A1": 5, "A2": 1}, version=2, price=2500)
    await store.apply_state(StateResponse(cursor=8, machines=[same_rev]))
    assert await store.stock("M1-A1") == (4, 1)  # local count kept, reservation kept
    catalog = {item.id: item for item in await store.catalog("M1")}
    assert catalog["M1-A1"].price == 2500 and catalog["M1-A1"].quantity == 3
    restock = make_machine("M1", creds["M1"], stock={"A1": 9}, version=3, stock_rev=1)
    await store.apply_state(StateResponse(cursor=9, machines=[restock]))
    assert await store.stock("M1-A1") == (9, 1)
    assert [item.id for item in await store.catalog("M1")] == ["M1-A1"]  # A2 left the planogram
    assert await store.state_cursor() == 9
    assert "inventory.changed" in await outbox_types(store)
    assert order.id


async def test_payment_update_is_idempotent(store: GatewayStore) -> None:
    order, _ = await store.create_order(
        NewOrder("M1", (NewOrderLine("M1-A1", 1),), PaymentMethod.SANDBOX), None, "h"
    )
    await store.attach_payment(
        PaymentIntent(
            payment_id="pay_1",
            order_id=order.id,
            provider="sandbox",
            status="created",
            amount=2000,
            currency="INR",
            qr_payload="upi://pay?x",
        )
    )
    update = PaymentUpdate(
        payment_id="pay_1",
        order_id=order.id,
        machine_id="M1",
        status="captured",
        amount=2000,
        currency="INR",
        provider="sandbox",
    )
    await store.apply_payment_update("msg-1", update)
    paid = await store.get_order(order.id)
    assert paid.status is OrderStatus.PAID and paid.paid_amount == 2000
    await store.apply_payment_update("msg-1", update)
    await store.apply_payment_update("msg-2", update)  # same payment under a new message id
    again = await store.get_order(order.id)
    assert again.version == paid.version
    with pytest.raises(OrderConflict):
        await store.cancel_order(order.id)


async def test_single_writer_serialises_concurrent_orders(store: GatewayStore) -> None:
    results = await asyncio.gather(
        *(store.create_order(sandbox_order(), None, "h") for _ in range(20)),
        return_exceptions=True,
    )
    created = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, InsufficientStock)]
    assert len(created) == 5 and len(refused) == 15  # exactly the stock, never oversold
    assert await store.stock("M1-A1") == (5, 5)
    writers = [t for t in threading.enumerate() if t.name == "store-writer"]
    assert len(writers) == 1
    assert [r["journal_mode"] for r in await store.query("PRAGMA journal_mode")] == ["wal"]


async def test_reopen_keeps_data_and_migrations_run_once(tmp_path: Path) -> None:
    settings = gateway_settings(tmp_path)
    async with GatewayStore(settings) as st:
        applied = await st.query("SELECT name FROM _sqlite_migrations")
    async with GatewayStore(settings) as st:
        assert await st.query("SELECT name FROM _sqlite_migrations") == applied
    assert settings.db_path.stat().st_mode & 0o777 == 0o600
