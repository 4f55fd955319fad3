"""Closing the provider's QR code of a payment whose order ended unpaid.

``cloud.sync.events`` sets ``payments.close_state = 'pending'`` when an order snapshot says the
order was cancelled or expired; this worker asks the provider to close the QR code, so a
customer who scans it late cannot pay for an order that no longer exists. (A payment that
lands anyway is refunded: ``rf-<payment_id>-unserved``.) Outcomes: ``closed``, or ``failed``
after ``provider_close_attempts`` tries (logged; the QR code still closes itself at its
``close_by``). Closing one that is already closed or paid counts as closed.

Claiming: a short transaction picks due rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so
several cloud processes share the work) and stamps ``polled_at`` as a lease; the provider is
called outside any transaction (SQLite's write lock is never held across the network). Tries
are counted per process; after a restart a row starts counting again, which only costs extra
tries of an idempotent call.
"""

import asyncio
import logging
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa

from cloud.context import CloudContext
from cloud.db import schema as t
from cloud.db.engine import is_sqlite
from cloud.db.times import utcnow
from cloud.errors import CloudError
from cloud.payments.provider import ProviderNotConfigured
from cloud.payments.registry import provider_for

log = logging.getLogger(__name__)

_BATCH = 20


@dataclass
class _Tries:
    """Per-process record of failed tries, so each row backs off on its own."""

    count: dict[str, int] = field(default_factory=dict)
    not_before: dict[str, datetime] = field(default_factory=dict)

    def due(self, payment_id: str, now: datetime) -> bool:
        return self.not_before.get(payment_id, now) <= now

    def failed(self, payment_id: str, now: datetime, base_s: float, cap_s: float) -> int:
        tries = self.count.get(payment_id, 0) + 1
        self.count[payment_id] = tries
        ceiling = min(cap_s, base_s * 2 ** (tries - 1))
        self.not_before[payment_id] = now + timedelta(seconds=random.uniform(ceiling / 2, ceiling))
        return tries

    def forget(self, payment_id: str) -> None:
        self.count.pop(payment_id, None)
        self.not_before.pop(payment_id, None)


@dataclass(frozen=True)
class _Claimed:
    id: str
    tenant_id: str
    provider: str
    provider_ref: str | None
    status: str


async def _claim(ctx: CloudContext, tries: _Tries) -> list[_Claimed]:
    now = utcnow()
    # Another process's claim is respected for at least one backoff base.
    lease = timedelta(seconds=ctx.settings.provider_close_backoff_base_s)
    query = (
        sa.select(
            t.payments.c.id,
            t.payments.c.tenant_id,
            t.payments.c.provider,
            t.payments.c.provider_ref,
            t.payments.c.status,
        )
        .where(
            t.payments.c.close_state == "pending",
            sa.or_(t.payments.c.polled_at.is_(None), t.payments.c.polled_at <= now - lease),
        )
        .order_by(t.payments.c.updated_at)
        .limit(_BATCH * 4)
    )
    # A look without a lock first: most rounds find nothing, and on SQLite a write
    # transaction (BEGIN IMMEDIATE) every round would hold up every other writer.
    async with ctx.engine.connect() as conn:
        if not any(tries.due(r.id, now) for r in (await conn.execute(query)).all()):
            return []
    if not is_sqlite(ctx.engine):
        query = query.with_for_update(skip_locked=True)
    async with ctx.engine.begin() as conn:
        rows = [r for r in (await conn.execute(query)).all() if tries.due(r.id, now)][:_BATCH]
        if rows:
            await conn.execute(
                t.payments.update()
                .where(t.payments.c.id.in_([r.id for r in rows]))
                .values(polled_at=now)
            )
    return [_Claimed(r.id, r.tenant_id, r.provider, r.provider_ref, r.status) for r in rows]


async def _finish(ctx: CloudContext, payment_id: str, state: str, reason: str | None) -> None:
    now = utcnow()
    values: dict[str, object] = {"close_state": state, "updated_at": now}
    if state == "closed":
        values["closed_at"] = now
    else:
        values["failure_reason"] = (reason or "")[:200]
    async with ctx.engine.begin() as conn:
        await conn.execute(
            t.payments.update()
            .where(t.payments.c.id == payment_id, t.payments.c.close_state == "pending")
            .values(**values)
        )


async def _close_one(ctx: CloudContext, row: _Claimed, tries: _Tries) -> None:
    if row.status != "created" or row.provider_ref is None:
        # Paid (single-use codes close themselves when paid) or never opened: nothing to close.
        await _finish(ctx, row.id, "closed", None)
        tries.forget(row.id)
        return
    method = "sandbox" if row.provider == "sandbox" else "upi"
    try:
        provider = await provider_for(ctx, row.tenant_id, method)
        await provider.close(row.provider_ref)
    except ProviderNotConfigured as exc:
        log.warning(
            "payment %s: QR code %s not closed, the tenant has no provider any more (%s); "
            "it closes itself at its close_by",
            row.id,
            row.provider_ref,
            exc.message,
        )
        await _finish(ctx, row.id, "failed", f"no provider: {exc.message}")
        tries.forget(row.id)
        return
    except CloudError as exc:
        s = ctx.settings
        count = tries.failed(
            row.id, utcnow(), s.provider_close_backoff_base_s, s.provider_close_backoff_max_s
        )
        if count >= s.provider_close_attempts:
            log.error(
                "payment %s: QR code %s could not be closed after %d tries (%s); it closes "
                "itself at its close_by, and a payment made on it meanwhile is refunded",
                row.id,
                row.provider_ref,
                count,
                exc.message,
            )
            await _finish(ctx, row.id, "failed", exc.message)
            tries.forget(row.id)
        else:
            log.info("payment %s: closing QR code failed (try %d): %s", row.id, count, exc)
        return
    await _finish(ctx, row.id, "closed", None)
    tries.forget(row.id)


async def close_due(ctx: CloudContext, tries: _Tries | None = None) -> int:
    """Close the QR codes of every claimable ``close_state='pending'`` payment; returns how
    many were tried."""
    tries = tries if tries is not None else _Tries()
    rows = await _claim(ctx, tries)
    for row in rows:
        await _close_one(ctx, row, tries)
    return len(rows)


async def run_close_worker(ctx: CloudContext) -> None:
    tries = _Tries()
    while True:
        try:
            await close_due(ctx, tries)
        except (sa.exc.SQLAlchemyError, OSError):
            log.exception("closing provider QR codes failed; retrying")
        # A database poll, not hub.workers: that event is the sandbox worker's to clear, and
        # waiting on it while it stays set would spin. Closing is not latency-critical.
        await asyncio.sleep(ctx.settings.worker_poll_interval_s)
