"""The money invariant on the cloud, over random event sequences (hypothesis).

Each example is a few UPI orders, each with a story: paid in time (some units may fail to
come out), paid after the gateway cancelled it, or never paid; some customers pay a QR code
twice, and one payment may match no order. What the cloud receives is generated in a random
interleaving: provider webhooks (delivered once or several times, in any order), the gateway's
outbox events (order snapshots, refund requests; re-pushed at random) and the provider's refund
outcomes (processed or failed). Everything goes through the real cloud functions on a real
SQLite database: ``settle_provider_payment`` (webhooks and polls), ``store_batch`` (the sync
push), ``apply_provider_status`` (refund outcomes).

After every step: no payment or order has more refunded (or owed back) than was captured for
it, each provider payment pays our payment at most once, nothing is refunded under two ids.
At the end (every refund processed): for every order, captured = value dispensed + refunded,
and over the tenant, captured = dispensed + refunded + payments that match no order (left to
the operator); and the reconciliation report agrees (only the unmatched payments listed).
"""

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cloud_fixtures import MASTER_KEYS, cloud_test_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.db import schema as t
from cloud.db import sealed
from cloud.db.engine import create_engine
from cloud.db.migrate import upgrade
from cloud.payments.captures import settle_provider_payment
from cloud.payments.refunds import RetryPolicy, apply_provider_status
from cloud.reports.models import ReconciliationQuery
from cloud.reports.reconciliation import reconciliation
from cloud.sync.events import store_batch
from cloud.sync.identity import Gateway

DAY = "2031-07-01"
WHEN = datetime.fromisoformat(f"{DAY}T10:00:00+00:00")
POLICY = RetryPolicy(
    max_attempts=3,
    backoff_base_s=0.01,
    backoff_max_s=0.01,
    check_interval_s=0.01,
    check_max_s=0.01,
    lease_s=1.0,
)
NOT_OWED = "voided"


class _Db:
    """One migrated SQLite database and its event loop for every example of a test."""

    def __init__(self, path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        config = cloud_test_settings(
            f"sqlite+aiosqlite:///{path / 'cloud.db'}", path / "data", master_keys=MASTER_KEYS
        )
        self.engine: AsyncEngine = self.run(self._open(config))

    async def _open(self, config: Any) -> AsyncEngine:
        engine = create_engine(config.database_url)
        await upgrade(engine)
        keyed = sealed.with_keys(engine, config.key_ring())
        await sealed.seal_plaintext(keyed)
        return keyed

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.run(self.engine.dispose())
        self.loop.close()


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Db]:
    handle = _Db(tmp_path_factory.mktemp("money-cloud"))
    yield handle
    handle.close()


# --- the world of one example ----------------------------------------------------------------


@dataclass
class Order:
    id: str
    payment_id: str
    qr: str
    prices: list[int]
    story: str  # paid | late | unpaid
    failed: int  # units that fail (paid story)
    pps: list[str] = field(default_factory=list)  # provider payments the customer made

    @property
    def total(self) -> int:
        return sum(self.prices)

    def dispensed_value(self) -> int:
        if self.story != "paid":
            return 0
        return sum(self.prices[self.failed :])


@dataclass
class World:
    tenant_id: str
    site_id: str
    machine_id: str
    gateway: Gateway
    orders: list[Order]
    unmatched: list[tuple[str, int]]
    seq: int = 0
    pushed: list[dict[str, Any]] = field(default_factory=list)
    captured: set[str] = field(default_factory=set)  # orders the gateway heard were paid


async def _new_world(
    engine: AsyncEngine, plans: list[tuple[list[int], str, int, bool]], unmatched: int
) -> World:
    ids = {k: str(uuid.uuid4()) for k in ("tenant", "site", "machine", "gateway")}
    now = datetime.now(UTC)
    orders = []
    async with engine.begin() as conn:
        await conn.execute(
            t.tenants.insert().values(id=ids["tenant"], name=f"t-{ids['tenant']}", created_at=now)
        )
        await conn.execute(
            t.sites.insert().values(
                id=ids["site"], tenant_id=ids["tenant"], name="site", created_at=now
            )
        )
        await conn.execute(
            t.machines.insert().values(
                id=ids["machine"],
                tenant_id=ids["tenant"],
                site_id=ids["site"],
                name="m",
                status="active",
                currency="INR",
                mqtt_secret_hash="x",
                command_key="x",
                config={},
                version=0,
                created_at=now,
                updated_at=now,
            )
        )
        await conn.execute(
            t.gateways.insert().values(
                id=ids["gateway"],
                tenant_id=ids["tenant"],
                site_id=ids["site"],
                cert_serial=ids["gateway"],
                cert_not_after=now,
                status="active",
                created_at=now,
            )
        )
        for prices, story, failed, twice in plans:
            order = Order(
                id=str(uuid.uuid4()),
                payment_id=str(uuid.uuid4()),
                qr=f"qr_{uuid.uuid4().hex[:14]}",
                prices=prices,
                story=story,
                failed=failed,
            )
            if story != "unpaid":
                order.pps = [f"pay_{uuid.uuid4().hex[:14]}" for _ in range(2 if twice else 1)]
            await conn.execute(
                t.payments.insert().values(
                    id=order.payment_id,
                    tenant_id=ids["tenant"],
                    site_id=ids["site"],
                    machine_id=ids["machine"],
                    gateway_id=ids["gateway"],
                    order_id=order.id,
                    provider="razorpay",
                    provider_ref=order.qr,
                    status="created",
                    amount=order.total,
                    currency="INR",
                    idempotency_key=f"idem-{order.payment_id}",
                    created_at=WHEN,
                    updated_at=WHEN,
                )
            )
            orders.append(order)
    return World(
        tenant_id=ids["tenant"],
        site_id=ids["site"],
        machine_id=ids["machine"],
        gateway=Gateway(id=ids["gateway"], tenant_id=ids["tenant"], site_id=ids["site"]),
        orders=orders,
        unmatched=[(f"pay_{uuid.uuid4().hex[:14]}", 700) for _ in range(unmatched)],
    )


# --- what the cloud receives -----------------------------------------------------------------


def _snapshot(world: World, order: Order, version: int, status: str) -> dict[str, Any]:
    paid = order.total if status in ("paid", "completed", "partially_completed", "failed") else 0
    final = status in ("completed", "partially_completed", "failed")
    items = []
    for n, price in enumerate(order.prices):
        failed = final and n < order.failed
        items.append(
            {
                "id": f"{order.id}-{n}",
                "catalog_item_id": "cat-A1",
                "slot": "A1",
                "name": "Cola",
                "unit_price": price,
                "quantity": 1,
                "dispensed": 1 if final and not failed else 0,
                "failed": 1 if failed else 0,
                "dispense_status": "failed" if failed else "dispensed" if final else "pending",
            }
        )
    return {
        "id": order.id,
        "machine_id": world.machine_id,
        "status": status,
        "payment_method": "upi",
        "total_amount": order.total,
        "paid_amount": paid,
        "currency": "INR",
        "payment_id": order.payment_id,
        "refund_amount": sum(order.prices[: order.failed]) if final else 0,
        "items": items,
        "created_at": WHEN.isoformat(),
        "updated_at": WHEN.isoformat(),
        "version": version,
    }


def _refund_request(
    world: World, order: Order, refund_id: str, amount: int, reason: str
) -> dict[str, Any]:
    return {
        "refund_id": refund_id,
        "order_id": order.id,
        "machine_id": world.machine_id,
        "payment_id": order.payment_id,
        "amount": amount,
        "currency": "INR",
        "reason": reason,
    }


@dataclass
class Step:
    kind: str  # webhook | gateway
    order: Order | None
    data: Any
    needs_capture: bool = False  # the gateway learns of the payment from the cloud first


def _tracks(world: World) -> list[list[Step]]:
    """Per order: the gateway's outbox events in their order, and each provider payment's
    webhook deliveries; every track runs in order, tracks interleave freely."""
    tracks: list[list[Step]] = []
    for order in world.orders:
        gw: list[Step] = [
            Step(
                "gateway", order, ("order.snapshot", _snapshot(world, order, 1, "awaiting_payment"))
            )
        ]
        if order.story == "paid":
            final = (
                "completed"
                if order.failed == 0
                else ("failed" if order.failed == len(order.prices) else "partially_completed")
            )
            gw.append(
                Step(
                    "gateway",
                    order,
                    ("order.snapshot", _snapshot(world, order, 2, "paid")),
                    needs_capture=True,
                )
            )
            gw.append(Step("gateway", order, ("order.snapshot", _snapshot(world, order, 3, final))))
            if order.failed:
                gw.append(
                    Step(
                        "gateway",
                        order,
                        (
                            "refund.request",
                            _refund_request(
                                world,
                                order,
                                f"rf-{order.id}-undispensed",
                                sum(order.prices[: order.failed]),
                                "undispensed",
                            ),
                        ),
                    )
                )
        else:
            gw.append(
                Step("gateway", order, ("order.snapshot", _snapshot(world, order, 2, "cancelled")))
            )
            if order.story == "late":
                gw.append(
                    Step(
                        "gateway",
                        order,
                        (
                            "refund.request",
                            _refund_request(
                                world,
                                order,
                                f"rf-{order.payment_id}-unserved",
                                order.total,
                                "unserved",
                            ),
                        ),
                        needs_capture=True,
                    )
                )
        tracks.append(gw)
        for pp in order.pps:
            tracks.append([Step("webhook", order, (pp, order.total, order.qr))])
    for pp, amount in world.unmatched:
        tracks.append([Step("webhook", None, (pp, amount, f"qr_{uuid.uuid4().hex[:14]}"))])
    return tracks


def _entity(pp: str, amount: int, qr: str, order: Order | None) -> dict[str, Any]:
    notes = {"order_id": order.id, "payment_id": order.payment_id} if order else {}
    return {
        "id": pp,
        "entity": "payment",
        "amount": amount,
        "currency": "INR",
        "status": "captured",
        "method": "upi",
        "amount_refunded": 0,
        "notes": notes,
        "created_at": int(WHEN.timestamp()),
    }


async def _webhook(engine: AsyncEngine, world: World, step: Step) -> None:
    pp, amount, qr = step.data
    async with engine.begin() as conn:
        settled = await settle_provider_payment(
            conn, world.tenant_id, _entity(pp, amount, qr, step.order), {"id": qr}, "webhook"
        )
    assert settled.outcome != "invalid", settled
    if step.order is not None and settled.payment_id == step.order.payment_id:
        # The cloud tells the gateway (payment.update); from now on it knows.
        world.captured.add(step.order.id)


async def _push(engine: AsyncEngine, world: World, events: list[dict[str, Any]]) -> None:
    ack = await store_batch(engine, world.gateway, {"events": events})
    assert not ack.rejected, ack


async def _gateway(engine: AsyncEngine, world: World, step: Step) -> None:
    type_, payload = step.data
    world.seq += 1
    event = {
        "seq": world.seq,
        "event_id": f"ev-{uuid.uuid4().hex}",
        "type": type_,
        "occurred_at": WHEN.isoformat(),
        "payload": payload,
    }
    world.pushed.append(event)
    await _push(engine, world, [event])


async def _refund_outcome(engine: AsyncEngine, world: World, pick: int, status: str) -> None:
    async with engine.begin() as conn:
        rows = (
            await conn.execute(
                sa.select(t.refunds)
                .where(t.refunds.c.tenant_id == world.tenant_id)
                .order_by(t.refunds.c.id)
            )
        ).all()
        if rows:
            row = rows[pick % len(rows)]
            await apply_provider_status(conn, row, f"rfnd_{uuid.uuid4().hex[:12]}", status, POLICY)


# --- the checks ------------------------------------------------------------------------------


async def _state(engine: AsyncEngine, world: World) -> tuple[Any, Any, Any]:
    async with engine.connect() as conn:
        pps = (
            await conn.execute(
                sa.select(t.provider_payments).where(
                    t.provider_payments.c.tenant_id == world.tenant_id
                )
            )
        ).all()
        refunds = (
            await conn.execute(sa.select(t.refunds).where(t.refunds.c.tenant_id == world.tenant_id))
        ).all()
        payments = (
            await conn.execute(
                sa.select(t.payments).where(t.payments.c.tenant_id == world.tenant_id)
            )
        ).all()
    return pps, refunds, payments


async def _check_safety(engine: AsyncEngine, world: World) -> None:
    pps, refunds, payments = await _state(engine, world)
    captured = {p.id: p for p in pps if p.status in ("captured", "refunded")}
    owed_back = [r for r in refunds if r.status != NOT_OWED]
    for payment in payments:
        mine = [p for p in captured.values() if p.payment_id == payment.id]
        taken = sum(p.amount for p in mine)
        back = sum(r.amount for r in owed_back if r.payment_id == payment.id)
        assert back <= taken, (payment.id, back, taken)
        if payment.status == "captured":
            # paid by exactly one provider payment of its amount
            assert payment.provider_payment_id in captured
            assert captured[payment.provider_payment_id].amount == payment.amount
        for r in refunds:
            if r.reason == "duplicate" and r.payment_id == payment.id:
                assert r.provider_payment_id != payment.provider_payment_id
    for p in captured.values():
        mine = [r for r in owed_back if r.provider_payment_id == p.id]
        assert sum(r.amount for r in mine) <= p.amount, (p.id, mine)
    # one refund per (payment, reason) whatever delivered it and how often
    keys = [(r.payment_id, r.provider_payment_id, r.reason) for r in refunds]
    assert len(keys) == len(set(keys)), keys


async def _check_final(engine: AsyncEngine, world: World) -> None:
    # The provider processes every refund in the end (the refund worker's job).
    async with engine.begin() as conn:
        for row in (
            await conn.execute(sa.select(t.refunds).where(t.refunds.c.tenant_id == world.tenant_id))
        ).all():
            await apply_provider_status(conn, row, None, "processed", POLICY)
    pps, refunds, _ = await _state(engine, world)
    refunded = {r.id: r for r in refunds if r.status == "refunded"}
    assert len(refunded) == len(refunds)
    total_in = sum(p.amount for p in pps if p.status in ("captured", "refunded"))
    unmatched = sum(amount for _, amount in world.unmatched)
    dispensed = 0
    for order in world.orders:
        taken = sum(p.amount for p in pps if p.payment_id == order.payment_id)
        back = sum(r.amount for r in refunds if r.payment_id == order.payment_id)
        assert taken == len(order.pps) * order.total
        assert taken == order.dispensed_value() + back, (order.story, order.failed, taken, back)
        dispensed += order.dispensed_value()
    assert total_in == dispensed + sum(r.amount for r in refunds) + unmatched
    async with engine.connect() as conn:
        report = await reconciliation(
            conn, world.tenant_id, ReconciliationQuery.model_validate({"date": DAY})
        )
    assert report.counts["payment_without_order"] == len(world.unmatched), report
    assert sum(report.counts.values()) == len(world.unmatched), report.mismatches


# --- the property ----------------------------------------------------------------------------

plans = st.lists(
    st.tuples(
        st.lists(st.sampled_from([1000, 2500]), min_size=1, max_size=3),
        st.sampled_from(["paid", "late", "unpaid"]),
        st.integers(min_value=0, max_value=3),
        st.booleans(),
    ),
    min_size=1,
    max_size=3,
)


@settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plans=plans, unmatched=st.integers(min_value=0, max_value=1), data=st.data())
def test_cloud_money_invariant(db: _Db, plans: Any, unmatched: int, data: st.DataObject) -> None:
    plans = [
        (prices, story, min(failed, len(prices)), twice) for prices, story, failed, twice in plans
    ]
    world = db.run(_new_world(db.engine, plans, unmatched))
    tracks = [list(track) for track in _tracks(world)]
    pending_webhooks: list[Step] = []  # delivered once already: may come again
    while any(tracks):
        ready = [
            tr
            for tr in tracks
            if tr and not (tr[0].needs_capture and tr[0].order.id not in world.captured)  # type: ignore[union-attr]
        ]
        choice = data.draw(st.integers(0, len(ready) + 1), label="next")
        if choice == len(ready) and pending_webhooks:
            # the provider redelivers a webhook it already sent
            step = data.draw(st.sampled_from(pending_webhooks), label="redeliver")
            db.run(_webhook(db.engine, world, step))
        elif choice == len(ready) + 1 and world.pushed:
            # the gateway pushes its last batch again (its ack got lost)
            db.run(_push(db.engine, world, world.pushed[-1:]))
        elif ready:
            track = ready[choice % len(ready)]
            step = track.pop(0)
            if step.kind == "webhook":
                db.run(_webhook(db.engine, world, step))
                pending_webhooks.append(step)
            else:
                db.run(_gateway(db.engine, world, step))
        if data.draw(st.booleans(), label="refund outcome?"):
            pick = data.draw(st.integers(0, 5), label="which refund")
            status = data.draw(st.sampled_from(["processed", "failed", "pending"]), label="outcome")
            db.run(_refund_outcome(db.engine, world, pick, status))
        db.run(_check_safety(db.engine, world))
    db.run(_check_final(db.engine, world))
