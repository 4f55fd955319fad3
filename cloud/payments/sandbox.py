"""The sandbox provider: every payment is captured by itself after a configurable delay.

``approve_at`` is stored with the payment, and a worker captures due payments, so a capture
still happens after a cloud restart. On Postgres the worker claims rows with
``FOR UPDATE SKIP LOCKED`` so any number of cloud processes can run it.
"""

import asyncio
import contextlib
import logging
import uuid
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.db import schema as t
from cloud.db.engine import is_sqlite
from cloud.db.times import as_utc, utcnow
from cloud.errors import IntegrationFailed
from cloud.payments.provider import PaymentRequest, ProviderPayment, ProviderRefund, QrPayments
from cloud.sync.hub import ChannelHub
from cloud.sync.outbox import enqueue, site_gateways
from contracts.sync import PaymentUpdate

log = logging.getLogger(__name__)

SANDBOX = "sandbox"
SANDBOX_VPA = "sandbox@vending"


def upi_amount(paise: int) -> str:
    return f"{paise // 100}.{paise % 100:02d}"


class SandboxProvider:
    name = SANDBOX

    def __init__(self, approve_delay_s: float, expiry_s: int) -> None:
        self._delay = approve_delay_s
        self._expiry = expiry_s

    async def create(self, request: PaymentRequest) -> ProviderPayment:
        now = utcnow()
        qr = f"upi://pay?pa={SANDBOX_VPA}&am={upi_amount(request.amount)}&tr={request.payment_id}"
        return ProviderPayment(
            provider_ref=f"sbx_{uuid.uuid4().hex}",
            qr_payload=qr,
            expires_at=now + timedelta(seconds=self._expiry),
            approve_at=now + timedelta(seconds=self._delay),
        )

    async def close(self, provider_ref: str) -> None:
        """Nothing to close: a sandbox payment the order gave up on is simply never shown."""

    async def lookup(self, provider_ref: str) -> ProviderPayment:
        raise IntegrationFailed("the sandbox keeps no payments of its own")

    async def refund(
        self,
        refund_id: str,
        provider_payment_id: str | None,
        amount: int,
        *,
        order_id: str | None = None,
    ) -> ProviderRefund:
        # No money moved, so the refund is done at once: sandbox orders go through the same
        # refund states as real ones.
        return ProviderRefund(provider_refund_id=f"sbx_{refund_id}", status="processed")

    async def payments_of(self, provider_ref: str) -> QrPayments:
        # Captures happen in capture_due; there is nothing to poll.
        return QrPayments(qr_code={"id": provider_ref, "status": "active"})


async def capture_due(engine: AsyncEngine, hub: ChannelHub, batch: int = 50) -> int:
    """Capture every sandbox payment whose ``approve_at`` has passed; returns how many."""
    woken: list[str] = []
    due = sa.and_(
        t.payments.c.provider == SANDBOX,
        t.payments.c.status == "created",
        t.payments.c.approve_at <= utcnow(),
    )
    # A look without a lock first (as the closer does): most rounds find nothing, and on SQLite
    # a write transaction (BEGIN IMMEDIATE) every round would hold up every other writer.
    async with engine.connect() as conn:
        if (await conn.scalar(sa.select(t.payments.c.id).where(due).limit(1))) is None:
            return 0
    async with engine.begin() as conn:
        query = sa.select(t.payments).where(due).order_by(t.payments.c.approve_at).limit(batch)
        if not is_sqlite(engine):
            query = query.with_for_update(skip_locked=True)
        rows = (await conn.execute(query)).all()
        now = utcnow()
        for row in rows:
            await conn.execute(
                t.payments.update()
                .where(t.payments.c.id == row.id)
                .values(status="captured", captured_at=now, updated_at=now)
            )
            update = PaymentUpdate(
                payment_id=row.id,
                order_id=row.order_id,
                machine_id=row.machine_id,
                status="captured",
                amount=row.amount,
                currency=row.currency,
                provider=row.provider,
            )
            targets = await site_gateways(conn, row.site_id)
            await enqueue(conn, targets, "payment.update", update.model_dump(mode="json"))
            woken.extend(targets)
    hub.wake(woken)
    return len(rows)


async def _next_due_in(engine: AsyncEngine) -> float | None:
    async with engine.connect() as conn:
        due = await conn.scalar(
            sa.select(sa.func.min(t.payments.c.approve_at)).where(
                t.payments.c.provider == SANDBOX, t.payments.c.status == "created"
            )
        )
    if due is None:
        return None
    return max(0.0, (as_utc(due) - utcnow()).total_seconds())


async def run_capture_worker(engine: AsyncEngine, hub: ChannelHub, poll_interval_s: float) -> None:
    while True:
        wait = poll_interval_s
        try:
            while await capture_due(engine, hub):
                pass
            due_in = await _next_due_in(engine)
            if due_in is not None:
                wait = min(wait, due_in + 0.01)
        except (sa.exc.SQLAlchemyError, OSError):
            log.exception("sandbox capture failed; retrying")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await hub.workers.wait()
        hub.workers.clear()
