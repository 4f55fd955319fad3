"""The per-machine dispense counter on a real store: never below the wall clock in milliseconds
(so a new or restored database does not fall behind the device), strictly increasing."""

import itertools
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gw_support import gateway_settings, make_machine
from standalone_site import MachineCreds

from contracts.device_messages import CashCredit
from contracts.orders import DispenseOutcome, PaymentMethod
from contracts.signing import down_key, verify_command
from contracts.sync import StateResponse
from edge.store import GatewayStore, ledger
from edge.store.views import NewOrder, NewOrderLine


@pytest.fixture
async def store(tmp_path: Path, creds: dict[str, MachineCreds]) -> AsyncIterator[GatewayStore]:
    async with GatewayStore(gateway_settings(tmp_path)) as st:
        await st.apply_state(
            StateResponse(cursor=1, machines=[make_machine("M1", creds["M1"], stock={"A1": 9})])
        )
        yield st


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def paid_order(store: GatewayStore, quantity: int) -> str:
    new = NewOrder("M1", (NewOrderLine("M1-A1", quantity),), PaymentMethod.CASH)
    view, _ = await store.create_order(new, None, os.urandom(4).hex())
    credit = CashCredit(id=os.urandom(16).hex(), amount=view.total_amount, ts=int(time.time()))
    await store.record_cash_credit("M1", credit)
    return view.id


async def issue(store: GatewayStore, order_id: str, units: int) -> list[int]:
    """Sign ``units`` commands back to back in ONE transaction (so within a millisecond or so),
    resolving each so the next unit gets a new command; returns their counters."""

    def run(db: ledger.Db) -> list[int]:
        counters = []
        for _ in range(units):
            command = ledger.next_command(db, order_id, 60)
            assert command is not None and not command.resumed
            counters.append(
                db.execute(
                    "SELECT ctr FROM dispense_commands WHERE cmd_id = ?", [command.cmd_id]
                ).fetchone()[0]
            )
            ledger.record_dispense_result(
                db, "M1", command.cmd_id, DispenseOutcome.OK, None, int(time.time())
            )
        return counters

    return await store._writer.run(run)


async def test_fresh_store_starts_at_the_wall_clock(
    store: GatewayStore, creds: dict[str, MachineCreds]
) -> None:
    order_id = await paid_order(store, 1)
    before = now_ms()
    command = await store.next_command(order_id, 60)
    assert command is not None
    body = verify_command(down_key(bytes.fromhex(creds["M1"].command_key)), command.payload)
    assert before <= body.ctr <= now_ms()


async def test_counters_strictly_increase_within_a_millisecond(store: GatewayStore) -> None:
    before = now_ms()
    counters = await issue(store, await paid_order(store, 5), 5)
    assert counters[0] >= before
    assert all(b > a for a, b in itertools.pairwise(counters))
    assert len(set(counters)) == 5


async def test_counter_ahead_of_the_clock_keeps_counting(store: GatewayStore) -> None:
    """The clock stepped back (or another gateway ran ahead): +1, never the smaller clock."""
    ahead = now_ms() + 10_000_000
    await store._writer.run(
        lambda db: db.execute(
            "INSERT INTO device_counters (machine_id, ctr) VALUES ('M1', ?)", [ahead]
        )
    )
    assert await issue(store, await paid_order(store, 3), 3) == [ahead + 1, ahead + 2, ahead + 3]
