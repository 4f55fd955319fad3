"""The money invariant at the gateway, over random event sequences (hypothesis).

A real ``GatewayStore`` on a SQLite file: cash and UPI (sandbox) orders, coins (signed like the
firmware signs them), the cloud's payment confirmations (duplicated under new message ids,
replayed under the same id, late after a cancel or an expiry), cancels, dispense results
(ok, failed, unknown, timed out and corrected late), the cloud's refund updates, and restarts
(the store closed and opened again from the same file, as after a power cut).

After every step, for the machine: money in (cash credits + captured payments) = value
dispensed + refunds requested + free machine credit + what open orders hold (paid, not yet
dispensed). And: every finished order's paid amount is exactly its dispensed value plus its
refund or credit; the credit.entry events add up to the machine credit and end at it; an
order's refunds never exceed what was paid for it; nothing is refunded or credited twice.
"""

import asyncio
import itertools
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gw_support import gateway_settings, make_machine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from standalone_site import MachineCreds

from contracts import topics
from contracts.device_messages import CashCredit, DispenseResult
from contracts.orders import TERMINAL_ORDER_STATUSES, OrderStatus, PaymentMethod
from contracts.signing import sign_device_message, up_key
from contracts.sync import MoneyPolicy, PaymentIntent, PaymentUpdate, RefundUpdate, StateResponse
from edge.errors import GatewayError
from edge.store import GatewayStore
from edge.store.views import NewOrder, NewOrderLine

MACHINE = "M1"
ITEMS = ("M1-A1", "M1-A2")
TERMINAL = frozenset(s.value for s in TERMINAL_ORDER_STATUSES)
_counter = itertools.count(int(time.time_ns() // 1000))


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)


@pytest.fixture(scope="module")
def loop() -> Iterator[_Loop]:
    handle = _Loop()
    yield handle
    handle.loop.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, creds: dict[str, MachineCreds]) -> Any:
    return tmp_path_factory.mktemp("money-gw"), creds[MACHINE]


class Site:
    """One gateway store (reopened on restarts) and what the test sent it."""

    def __init__(self, data_dir: Path, creds: MachineCreds, policy: MoneyPolicy) -> None:
        self.settings = gateway_settings(data_dir)
        self.creds = creds
        self.policy = policy
        self.store: GatewayStore | None = None
        self.up = up_key(bytes.fromhex(creds.command_key))
        self.messages: list[tuple[str, PaymentUpdate]] = []  # payment updates sent
        self.timed_out: list[tuple[str, str, str, str]] = []  # (cmd, order, item, slot)

    async def open(self, first: bool = False) -> GatewayStore:
        self.store = GatewayStore(self.settings)
        await self.store.__aenter__()
        if first:
            m1 = make_machine(MACHINE, self.creds, stock={"A1": 100, "A2": 100}, price=1000)
            m1 = m1.model_copy(update={"money_policy": self.policy})
            await self.store.apply_state(StateResponse(cursor=1, machines=[m1]))
        return self.store

    async def close(self) -> None:
        if self.store is not None:
            await self.store.__aexit__(None, None, None)
            self.store = None

    @property
    def st(self) -> GatewayStore:
        assert self.store is not None
        return self.store

    async def signed(self, topic: str, fields: dict[str, Any]) -> None:
        body = sign_device_message(self.up, MACHINE, next(_counter), fields)
        outcome = await self.st.record_signed_message(MACHINE, topic, body)
        assert outcome.status in ("applied", "corrected", "duplicate"), outcome

    async def rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        return await self.st.query(sql, params or [])


# --- actions ---------------------------------------------------------------------------------


async def _order(site: Site, data: st.DataObject, method: PaymentMethod) -> None:
    lines = tuple(
        NewOrderLine(item, data.draw(st.integers(1, 2), label="qty"))
        for item in data.draw(st.lists(st.sampled_from(ITEMS), min_size=1, max_size=2, unique=True))
    )
    try:
        view, _ = await site.st.create_order(
            NewOrder(MACHINE, lines, method), None, uuid.uuid4().hex
        )
    except GatewayError:
        return  # busy machine, disabled slot: the kiosk would say so; no money moved
    if method is not PaymentMethod.CASH:
        await site.st.attach_payment(
            PaymentIntent(
                payment_id=str(uuid.uuid4()),
                order_id=view.id,
                provider="sandbox",
                status="created",
                amount=view.total_amount,
                currency=view.currency,
            )
        )


async def _coin(site: Site, data: st.DataObject) -> None:
    amount = data.draw(st.sampled_from([500, 1000, 2000]), label="coin")
    credit = CashCredit(id=os.urandom(16).hex(), amount=amount, ts=int(time.time()))
    await site.signed(topics.CASH_CREDIT, credit.model_dump(mode="json"))


async def _pay(site: Site, data: st.DataObject) -> None:
    orders = await site.rows(
        "SELECT id, status, payment_id, total_amount, currency FROM orders "
        "WHERE payment_method != 'cash' AND payment_id IS NOT NULL ORDER BY created_at, id"
    )
    if data.draw(st.booleans(), label="replay?") and site.messages:
        # the channel sends a message again (same id) after a lost ack
        message_id, update = data.draw(st.sampled_from(site.messages), label="replayed")
    elif orders:
        waiting = [o for o in orders if o["status"] == "awaiting_payment"]
        if waiting and not data.draw(st.booleans(), label="any order (late)?"):
            orders = waiting
        row = data.draw(st.sampled_from(orders), label="paid order")
        update = PaymentUpdate(
            payment_id=row["payment_id"],
            order_id=row["id"],
            machine_id=MACHINE,
            status="captured",
            amount=row["total_amount"],
            currency=row["currency"],
            provider="sandbox",
        )
        message_id = f"msg-{uuid.uuid4().hex}"  # a new message about the same payment: a dupe
        site.messages.append((message_id, update))
    else:
        return
    await site.st.apply_payment_update(message_id, update)


async def _cancel(site: Site, data: st.DataObject) -> None:
    orders = await site.rows("SELECT id FROM orders ORDER BY created_at, id")
    if not orders:
        return
    row = data.draw(st.sampled_from(orders), label="cancelled order")
    try:
        await site.st.cancel_order(row["id"])
    except GatewayError:
        pass  # not cancellable any more (paid, dispensing, finished)


async def _dispense(site: Site, data: st.DataObject) -> None:
    orders = await site.rows(
        "SELECT id FROM orders WHERE status IN ('paid', 'dispensing') ORDER BY created_at, id"
    )
    if not orders:
        return
    order_id = data.draw(st.sampled_from(orders), label="dispensing order")["id"]
    command = await site.st.next_command(order_id, 30)
    if command is None:
        return
    [row] = await site.rows(
        "SELECT order_item_id FROM dispense_commands WHERE cmd_id = ?", [command.cmd_id]
    )
    item_id = row["order_item_id"]
    outcome = data.draw(st.sampled_from(["ok", "failed", "unknown", "timeout"]), label="result")
    if outcome == "timeout":
        await site.st.record_timeout(MACHINE, command.cmd_id)
        site.timed_out.append((command.cmd_id, order_id, item_id, command.slot))
        return
    await _result(site, command.cmd_id, order_id, item_id, command.slot, outcome)


async def _result(
    site: Site, cmd_id: str, order_id: str, item_id: str, slot: str, outcome: str
) -> None:
    message = DispenseResult(
        id=cmd_id,
        cmd_id=cmd_id,
        order_id=order_id,
        item_id=item_id,
        slot=slot,
        result=outcome,  # type: ignore[arg-type]
        reason="jam" if outcome == "failed" else None,
        ts=int(time.time()),
    )
    await site.signed(topics.DISPENSE_RESULT, message.model_dump(mode="json"))


async def _late_result(site: Site, data: st.DataObject) -> None:
    """The device's answer after the gateway gave up waiting (it was journalled)."""
    if not site.timed_out:
        return
    cmd_id, order_id, item_id, slot = data.draw(st.sampled_from(site.timed_out), label="late")
    outcome = data.draw(st.sampled_from(["ok", "failed"]), label="late result")
    await _result(site, cmd_id, order_id, item_id, slot, outcome)


async def _refund_update(site: Site, data: st.DataObject) -> None:
    refunds = await site.rows("SELECT * FROM refunds ORDER BY refund_id")
    if not refunds:
        return
    row = data.draw(st.sampled_from(refunds), label="refund")
    status = data.draw(st.sampled_from(["pending", "refunded", "failed", "manual_review"]))
    update = RefundUpdate(
        refund_id=row["refund_id"],
        order_id=row["order_id"],
        payment_id=row["payment_id"],
        amount=row["amount"],
        currency=row["currency"],
        status=status,  # type: ignore[arg-type]
    )
    await site.st.apply_refund_update(f"msg-{uuid.uuid4().hex}", update)


async def _restart(site: Site) -> None:
    await site.close()
    await site.open()


# --- the invariant ---------------------------------------------------------------------------


async def _check(site: Site) -> None:
    cash_in = (await site.rows("SELECT COALESCE(SUM(amount), 0) AS s FROM cash_credits"))[0]["s"]
    captured = (
        await site.rows(
            "SELECT COALESCE(SUM(amount), 0) AS s FROM payments WHERE status = 'captured'"
        )
    )[0]["s"]
    orders = await site.rows("SELECT * FROM orders")
    items = await site.rows("SELECT * FROM order_items")
    refunds = await site.rows("SELECT * FROM refunds")
    credit = await site.st.machine_credit(MACHINE, "INR")

    dispensed: dict[str, int] = {}
    for item in items:
        dispensed[item["order_id"]] = (
            dispensed.get(item["order_id"], 0) + item["dispensed"] * item["unit_price"]
        )
    refunded: dict[str, int] = {}
    for refund in refunds:
        if refund["status"] != "voided":
            refunded[refund["order_id"]] = refunded.get(refund["order_id"], 0) + refund["amount"]
    held_by_open = 0
    for order in orders:
        value = dispensed.get(order["id"], 0)
        back = refunded.get(order["id"], 0)
        assert back == order["refund_amount"], (order, back)
        assert back <= order["paid_amount"], order
        if order["status"] in TERMINAL:
            assert order["paid_amount"] == value + back + order["credit_amount"], order
            if order["status"] == OrderStatus.CANCELLED.value:
                assert value == 0, order
        else:
            held_by_open += order["paid_amount"] - value
    total_dispensed = sum(dispensed.values())
    total_refunds = sum(refunded.values())
    assert cash_in + captured == total_dispensed + total_refunds + credit + held_by_open, {
        "cash_in": cash_in,
        "captured": captured,
        "dispensed": total_dispensed,
        "refunds": total_refunds,
        "credit": credit,
        "open": held_by_open,
    }
    entries = await site.rows("SELECT delta, balance FROM credit_entries ORDER BY rowid")
    assert sum(e["delta"] for e in entries) == credit
    if entries:
        assert entries[-1]["balance"] == credit
    assert credit >= 0
    events = [e for e in await site.st.outbox_pending(10_000) if e.type == "credit.entry"]
    assert len({e.payload["entry_id"] for e in events}) == len(entries)


# Repeated entries weigh the draw: an order needs coins or a payment, then a dispense step per
# unit, before its money can end anywhere.
ACTIONS = [
    *("cash", "upi"),
    *("coin",) * 3,
    *("pay",) * 2,
    *("cancel", "expire"),
    *("dispense",) * 5,
    *("late", "refund", "restart"),
]


@settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    unknown=st.sampled_from(["refund", "review"]),
    steps=st.lists(st.sampled_from(ACTIONS), min_size=5, max_size=40),
    data=st.data(),
)
def test_gateway_money_invariant(
    loop: _Loop, site: Any, unknown: str, steps: list[str], data: st.DataObject
) -> None:
    base, creds = site
    world = Site(base / uuid.uuid4().hex, creds, MoneyPolicy(unknown_outcome=unknown))  # type: ignore[arg-type]

    async def run() -> None:
        await world.open(first=True)
        try:
            for action in steps:
                if action in ("cash", "upi"):
                    method = PaymentMethod.CASH if action == "cash" else PaymentMethod.SANDBOX
                    await _order(world, data, method)
                elif action == "coin":
                    await _coin(world, data)
                elif action == "pay":
                    await _pay(world, data)
                elif action == "cancel":
                    await _cancel(world, data)
                elif action == "expire":
                    await world.st.expire_orders(0)
                elif action == "dispense":
                    await _dispense(world, data)
                elif action == "late":
                    await _late_result(world, data)
                elif action == "refund":
                    await _refund_update(world, data)
                else:
                    await _restart(world)
                await _check(world)
        finally:
            await world.close()

    loop.run(run())
