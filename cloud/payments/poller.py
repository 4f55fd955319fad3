"""Asking the provider about QR payments whose webhooks are late or lost.

A Razorpay payment still ``created`` ``razorpay_poll_after_s`` after it was opened is polled
(its QR code and the payments made on it) at most every ``razorpay_poll_interval_s``, until its
QR code's ``close_by`` plus ``razorpay_poll_grace_s`` (a payment can be reported a little after
the code closed). Each captured payment found goes through the same function the webhooks use,
``cloud.payments.captures.apply_provider_payment`` with ``source="poll"``, so a payment seen by
both is applied once, and one that lands on a cancelled order is refunded like any other.

Claiming as in ``cloud.payments.closer``: a short transaction (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL) stamps ``polled_at``, which is also the per-row interval; the provider is called
outside any transaction.
"""

import asyncio
import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from cloud.context import CloudContext
from cloud.db import schema as t
from cloud.db.engine import is_sqlite
from cloud.db.times import utcnow
from cloud.errors import CloudError
from cloud.payments.captures import apply_provider_payment
from cloud.payments.provider import ProviderNotConfigured, ProviderUnavailable
from cloud.payments.razorpay import MIN_CLOSE_AHEAD_S, RAZORPAY
from cloud.payments.registry import provider_for

log = logging.getLogger(__name__)

_BATCH = 20
# Provider payment states that mean the money was taken (a refunded one was captured first).
_CAPTURED = ("captured", "refunded")


async def _claim(ctx: CloudContext) -> list[Any]:
    s = ctx.settings
    now = utcnow()
    # close_by is max(expires_at, created_at + 125 s) (cloud.payments.razorpay.close_by_for).
    grace = timedelta(seconds=s.razorpay_poll_grace_s)
    query = (
        sa.select(
            t.payments.c.id,
            t.payments.c.tenant_id,
            t.payments.c.provider_ref,
            t.payments.c.order_id,
        )
        .where(
            t.payments.c.provider == RAZORPAY,
            t.payments.c.status == "created",
            t.payments.c.provider_ref.is_not(None),
            t.payments.c.created_at <= now - timedelta(seconds=s.razorpay_poll_after_s),
            sa.or_(
                t.payments.c.expires_at >= now - grace,
                t.payments.c.created_at >= now - grace - timedelta(seconds=MIN_CLOSE_AHEAD_S),
            ),
            sa.or_(
                t.payments.c.polled_at.is_(None),
                t.payments.c.polled_at <= now - timedelta(seconds=s.razorpay_poll_interval_s),
            ),
        )
        .order_by(sa.func.coalesce(t.payments.c.polled_at, t.payments.c.created_at))
        .limit(_BATCH)
    )
    # A look without a lock first: most rounds find nothing, and on SQLite a write
    # transaction (BEGIN IMMEDIATE) every round would hold up every other writer.
    async with ctx.engine.connect() as conn:
        if not (await conn.execute(query)).first():
            return []
    if not is_sqlite(ctx.engine):
        query = query.with_for_update(skip_locked=True)
    async with ctx.engine.begin() as conn:
        rows = (await conn.execute(query)).all()
        if rows:
            await conn.execute(
                t.payments.update()
                .where(t.payments.c.id.in_([r.id for r in rows]))
                .values(polled_at=now)
            )
    return list(rows)


async def apply_found(
    ctx: CloudContext, tenant_id: str, qr_code: dict[str, Any], payments: Iterable[dict[str, Any]]
) -> int:
    """Apply each captured payment of a QR code; returns how many were handed over."""
    applied = 0
    for entity in payments:
        if entity.get("status") not in _CAPTURED:
            continue
        try:
            async with ctx.engine.begin() as conn:
                woken = await apply_provider_payment(conn, tenant_id, entity, qr_code, "poll")
        except CloudError as exc:
            log.warning("payment %s found by polling not applied: %s", entity.get("id"), exc)
            continue
        ctx.hub.wake(woken)
        # A refund may have been decided (payment on a cancelled order, duplicate payment).
        ctx.hub.wake_workers()
        applied += 1
    return applied


async def poll_due(ctx: CloudContext) -> int:
    """Poll every claimable payment once; returns how many captured payments were applied."""
    rows = await _claim(ctx)
    applied = 0
    unavailable: set[str] = set()
    for row in rows:
        if row.tenant_id in unavailable:
            continue
        try:
            provider = await provider_for(ctx, row.tenant_id, "upi")
            found = await provider.payments_of(row.provider_ref)
        except ProviderNotConfigured:
            # Credentials removed since: nothing to ask. Webhooks may still come.
            continue
        except ProviderUnavailable as exc:
            # The breaker counts it; the rest of this tenant's rows wait for the next round.
            unavailable.add(row.tenant_id)
            log.info("poll of payment %s skipped: %s", row.id, exc.message)
            continue
        except CloudError as exc:
            log.warning("poll of payment %s failed: %s", row.id, exc.message)
            continue
        applied += await apply_found(ctx, row.tenant_id, found.qr_code, found.payments)
    return applied


async def run_poll_worker(ctx: CloudContext) -> None:
    while True:
        try:
            await poll_due(ctx)
        except (sa.exc.SQLAlchemyError, OSError):
            log.exception("polling provider payments failed; retrying")
        await asyncio.sleep(ctx.settings.worker_poll_interval_s)
