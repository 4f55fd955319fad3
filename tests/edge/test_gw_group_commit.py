"""Group commit in the store's writer thread (``edge.store.dbthread``), on a real store file.

The jobs waiting when a transaction starts run in it, each in its own savepoint, and commit once;
no caller hears of its result before that COMMIT succeeded. To make a group deterministically,
a first job holds the writer until the others are queued (no timing involved)."""

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from gw_support import gateway_settings, make_machine
from standalone_site import MachineCreds

from contracts.orders import OrderStatus, PaymentMethod
from contracts.sync import StateResponse
from edge.errors import InsufficientStock, StoreError
from edge.store import GatewayStore
from edge.store.views import NewOrder, NewOrderLine

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def store(tmp_path: Path, creds: dict[str, MachineCreds]) -> AsyncIterator[GatewayStore]:
    async with GatewayStore(gateway_settings(tmp_path)) as st:
        await st.apply_state(
            StateResponse(
                cursor=1, machines=[make_machine("M1", creds["M1"], stock={"A1": 100, "A2": 1})]
            )
        )
        yield st


def order(quantity: int = 1, item: str = "M1-A1") -> NewOrder:
    """Several of these can be open on one machine (only one cash order can)."""
    return NewOrder("M1", (NewOrderLine(item, quantity),), PaymentMethod.SANDBOX)


async def in_one_group(
    store: GatewayStore, calls: Sequence[Callable[[], Awaitable[Any]]]
) -> tuple[list[Any], int]:
    """Run ``calls`` (each one writer job) as one group: a first job holds the writer until all
    of them are queued. Their outcomes (results or exceptions) and the commits they took."""
    writer = store._writer
    held, release = threading.Event(), threading.Event()

    def hold(db: Any) -> None:
        held.set()
        release.wait(30)

    before = writer.commits
    holder = asyncio.ensure_future(writer.run(hold))
    await asyncio.to_thread(held.wait, 30)
    tasks = [asyncio.ensure_future(call()) for call in calls]
    await asyncio.sleep(0)  # one turn of the loop: each task queues its job in its first step
    assert writer._jobs.qsize() == len(calls)
    # Nothing is answered while the group has not committed.
    assert not any(task.done() for task in tasks)
    release.set()
    await holder
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    return outcomes, writer.commits - before - 1


async def count(store: GatewayStore, sql: str) -> int:
    return int((await store.query(sql))[0]["n"])


async def test_concurrent_orders_share_one_commit(store: GatewayStore) -> None:
    calls = [lambda: store.create_order(order(), None, "h") for _ in range(30)]
    outcomes, commits = await in_one_group(store, calls)
    assert all(created for _, created in outcomes)
    assert len({view.id for view, _ in outcomes}) == 30
    assert commits == 1  # 30 orders, one transaction
    assert await store.stock("M1-A1") == (100, 30)
    assert await count(store, "SELECT COUNT(*) AS n FROM orders") == 30
    snapshots = "SELECT COUNT(*) AS n FROM outbox WHERE type = 'order.snapshot'"
    assert await count(store, snapshots) == 30  # each order's outbox event with it


async def test_concurrent_writes_without_a_hold_take_fewer_commits(store: GatewayStore) -> None:
    before = store._writer.commits
    results = await asyncio.gather(*(store.create_order(order(), None, "h") for _ in range(40)))
    assert all(created for _, created in results)
    # Queued while the first one runs: they cannot all have taken a commit of their own.
    assert store._writer.commits - before < 40


async def test_a_failing_job_loses_only_its_own_work(store: GatewayStore) -> None:
    def insert_then_raise(db: Any) -> None:
        db.execute("INSERT INTO kv (key, value) VALUES ('half-done', 'x')")
        raise ValueError("the job's own error")

    def insert_then_violate(db: Any) -> None:
        db.execute("INSERT INTO kv (key, value) VALUES ('also-half-done', 'x')")
        db.execute("INSERT INTO kv (key, value) VALUES ('state_cursor', 'duplicate')")

    writer = store._writer
    outcomes, commits = await in_one_group(
        store,
        [
            lambda: store.create_order(order(), None, "first"),
            lambda: writer.run(insert_then_raise),
            lambda: store.create_order(order(2, "M1-A2"), None, "too many"),
            lambda: writer.run(insert_then_violate),
            lambda: store.create_order(order(3), None, "last"),
        ],
    )
    first, raised, short, violated, last = outcomes
    assert commits == 1
    assert isinstance(raised, ValueError) and str(raised) == "the job's own error"
    assert isinstance(short, InsufficientStock)
    assert isinstance(violated, StoreError) and "UNIQUE" in str(violated)
    assert first[1] and last[1]
    rows = await store.query("SELECT id, status FROM orders ORDER BY created_at")
    assert {r["id"] for r in rows} == {first[0].id, last[0].id}
    assert all(r["status"] == OrderStatus.AWAITING_PAYMENT.value for r in rows)
    assert await count(store, "SELECT COUNT(*) AS n FROM kv WHERE key LIKE '%half-done'") == 0
    assert await store.stock("M1-A1") == (100, 4)
    assert await store.stock("M1-A2") == (1, 0)  # the refused order reserved nothing


async def test_a_failed_commit_fails_every_job_and_keeps_nothing(store: GatewayStore) -> None:
    def violate_at_commit(db: Any) -> str:
        # The foreign key is checked at COMMIT only: the job itself succeeds.
        db.execute("PRAGMA defer_foreign_keys = ON")
        db.execute(
            "INSERT INTO order_items (id, order_id, position, catalog_item_id, slot, name, "
            "unit_price, quantity, dispense_status) "
            "VALUES ('orphan', 'no-such-order', 0, 'M1-A1', 'A1', 'x', 1, 1, 'pending')"
        )
        return "the job itself succeeded"

    orders_before = await count(store, "SELECT COUNT(*) AS n FROM orders")
    outbox_before = await count(store, "SELECT COUNT(*) AS n FROM outbox")
    outcomes, commits = await in_one_group(
        store,
        [
            lambda: store.create_order(order(), None, "a"),
            lambda: store._writer.run(violate_at_commit),
            lambda: store.create_order(order(), None, "b"),
        ],
    )
    assert commits == 0
    for outcome in outcomes:
        assert isinstance(outcome, StoreError), outcome
        assert "FOREIGN KEY" in str(outcome)
    assert await count(store, "SELECT COUNT(*) AS n FROM orders") == orders_before
    assert await count(store, "SELECT COUNT(*) AS n FROM outbox") == outbox_before
    assert await count(store, "SELECT COUNT(*) AS n FROM order_items") == 0
    assert await store.stock("M1-A1") == (100, 0)
    # The writer goes on.
    view, created = await store.create_order(order(), None, "after")
    assert created and (await store.get_order(view.id)).id == view.id


async def test_a_job_that_ends_the_transaction_does_not_take_the_others_down(
    store: GatewayStore,
) -> None:
    def end_transaction(db: Any) -> None:
        db.execute("INSERT INTO kv (key, value) VALUES ('gone', 'x')")
        db.conn.execute("ROLLBACK")  # like SQLite after a full disk or an I/O error
        raise sqlite3.OperationalError("disk I/O error")

    outcomes, _ = await in_one_group(
        store,
        [
            lambda: store.create_order(order(), None, "before"),
            lambda: store._writer.run(end_transaction),
            lambda: store.create_order(order(), None, "after"),
        ],
    )
    before, ended, after = outcomes
    assert isinstance(ended, StoreError)
    assert before[1] and after[1]
    ids = {r["id"] for r in await store.query("SELECT id FROM orders")}
    assert ids == {before[0].id, after[0].id}
    assert await count(store, "SELECT COUNT(*) AS n FROM kv WHERE key = 'gone'") == 0
    assert await store.stock("M1-A1") == (100, 2)


_CRASHING_WRITER = """
import asyncio, os, signal, sys
from pathlib import Path
from contracts.orders import PaymentMethod
from edge.settings import GatewaySettings
from edge.store import GatewayStore
from edge.store.views import NewOrder, NewOrderLine

async def main():
    settings = GatewaySettings(data_dir=Path(sys.argv[1]), http_port=0, mqtt_port=0,
                               zeroconf_enabled=False)
    store = GatewayStore(settings)
    await store.__aenter__()

    async def one():
        view, _ = await store.create_order(
            NewOrder("M1", (NewOrderLine("M1-A1", 1),), PaymentMethod.SANDBOX), None, "h")
        print(view.id, flush=True)  # acknowledged

    await asyncio.gather(*(one() for _ in range(25)))
    os.kill(os.getpid(), signal.SIGKILL)  # no clean close, no checkpoint

asyncio.run(main())
"""


async def test_every_acknowledged_order_survives_a_crash(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    settings = gateway_settings(tmp_path)
    async with GatewayStore(settings) as st:
        await st.apply_state(
            StateResponse(cursor=1, machines=[make_machine("M1", creds["M1"], stock={"A1": 100})])
        )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _CRASHING_WRITER, str(settings.data_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    acknowledged = proc.stdout.split()
    assert len(acknowledged) == 25
    # A plain connection on the file the killed process left (its WAL included).
    conn = sqlite3.connect(settings.db_path)
    try:
        stored = {row[0] for row in conn.execute("SELECT id FROM orders")}
        outbox = {row[0] for row in conn.execute("SELECT event_id FROM outbox")}
    finally:
        conn.close()
    assert set(acknowledged) <= stored
    assert {f"{order_id}-v1" for order_id in acknowledged} <= outbox
    async with GatewayStore(settings) as st:
        for order_id in acknowledged:
            assert (await st.get_order(order_id)).status is OrderStatus.AWAITING_PAYMENT
