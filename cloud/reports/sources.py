"""What the reports read: the tenant's machines, captured electronic payments and refunds.

One electronic capture is one amount of money a provider took from a customer:
- ``upi``: a ``provider_payments`` row in status ``captured`` or ``refunded`` (Razorpay calls a
  fully refunded payment ``refunded``; the money was still captured first);
- ``sandbox``: a ``payments`` row of the sandbox provider in status ``captured`` (the sandbox
  has no provider record of its own, so the cloud's payment row stands in for it).
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.db import schema as t
from cloud.db.times import as_utc
from contracts.orders import RefundStatus

SANDBOX = "sandbox"
CAPTURED_STATUSES = ("captured", "refunded")
OPEN_REFUND_STATUSES = frozenset(
    {RefundStatus.PENDING.value, RefundStatus.FAILED.value, RefundStatus.MANUAL_REVIEW.value}
)
_CHUNK = 500
# Refunds are made after the capture they return; a day's slack covers clocks that disagree
# (the provider's capture time against the cloud's refund row).
_REFUND_SLACK = timedelta(days=1)


@dataclass(frozen=True)
class Machine:
    id: str
    site_id: str
    name: str
    currency: str


@dataclass(frozen=True)
class Capture:
    """One captured electronic payment. ``provider_payment_id`` is None for the sandbox."""

    tender: str  # upi | sandbox
    payment_id: str | None  # the cloud's payment it paid, when it matched one
    provider_payment_id: str | None
    order_id: str | None
    machine_id: str | None
    amount: int
    currency: str
    at: datetime
    qr_code_id: str | None = None
    amount_refunded: int = 0  # as the provider reports it (upi only)
    # Whether this capture is the one that paid our payment (sandbox: always); a provider
    # payment that did not (a second one, a wrong amount) is owed back whole.
    paid_ours: bool = True

    @property
    def key(self) -> str:
        return self.provider_payment_id or self.payment_id or ""


@dataclass(frozen=True)
class Refund:
    id: str
    order_id: str | None
    payment_id: str | None
    provider_payment_id: str | None
    amount: int
    currency: str
    reason: str
    status: str


async def machines(conn: AsyncConnection, tenant_id: str) -> dict[str, Machine]:
    rows = await conn.execute(
        sa.select(
            t.machines.c.id, t.machines.c.site_id, t.machines.c.name, t.machines.c.currency
        ).where(t.machines.c.tenant_id == tenant_id)
    )
    return {r.id: Machine(r.id, r.site_id, r.name, r.currency) for r in rows}


def _chunks(ids: Iterable[str]) -> list[list[str]]:
    unique = sorted(set(ids))
    return [unique[i : i + _CHUNK] for i in range(0, len(unique), _CHUNK)]


async def orders_by_id(
    conn: AsyncConnection, tenant_id: str, ids: Iterable[str]
) -> dict[str, sa.Row[Any]]:
    found: dict[str, sa.Row[Any]] = {}
    for chunk in _chunks(ids):
        rows = await conn.execute(
            sa.select(t.orders).where(t.orders.c.tenant_id == tenant_id, t.orders.c.id.in_(chunk))
        )
        found.update({r.id: r for r in rows})
    return found


async def captures(
    conn: AsyncConnection, tenant_id: str, start: datetime, end: datetime
) -> list[Capture]:
    """Every electronic capture of the tenant in ``[start, end)``, by capture time."""
    sandbox_at = sa.func.coalesce(t.payments.c.captured_at, t.payments.c.updated_at)
    sandbox = await conn.execute(
        sa.select(
            t.payments.c.id,
            t.payments.c.order_id,
            t.payments.c.machine_id,
            t.payments.c.amount,
            t.payments.c.currency,
            sandbox_at.label("at"),
        ).where(
            t.payments.c.tenant_id == tenant_id,
            t.payments.c.provider == SANDBOX,
            t.payments.c.status == "captured",
            sandbox_at >= start,
            sandbox_at < end,
        )
    )
    found = [
        Capture(
            tender=SANDBOX,
            payment_id=r.id,
            provider_payment_id=None,
            order_id=r.order_id,
            machine_id=r.machine_id,
            amount=r.amount,
            currency=r.currency,
            at=as_utc(r.at),
        )
        for r in sandbox
    ]
    pp, p = t.provider_payments, t.payments
    upi_at = sa.func.coalesce(pp.c.captured_at, pp.c.first_seen_at)
    upi = await conn.execute(
        sa.select(
            pp.c.id,
            pp.c.payment_id,
            pp.c.order_id,
            pp.c.qr_code_id,
            pp.c.amount,
            pp.c.currency,
            pp.c.amount_refunded,
            upi_at.label("at"),
            p.c.order_id.label("p_order_id"),
            p.c.machine_id.label("p_machine_id"),
            p.c.provider_payment_id.label("p_provider_payment_id"),
        )
        .select_from(
            pp.outerjoin(p, sa.and_(p.c.id == pp.c.payment_id, p.c.tenant_id == tenant_id))
        )
        .where(
            pp.c.tenant_id == tenant_id,
            pp.c.provider != SANDBOX,
            pp.c.status.in_(CAPTURED_STATUSES),
            upi_at >= start,
            upi_at < end,
        )
    )
    upi_rows = upi.all()
    # A provider payment the cloud could not tie to its payment row may still name the order
    # (QR notes); its machine is the order's.
    orphan_orders = {
        r.order_id for r in upi_rows if r.p_machine_id is None and r.order_id is not None
    }
    orders = await orders_by_id(conn, tenant_id, orphan_orders)
    for r in upi_rows:
        order_id = r.order_id or r.p_order_id
        machine_id = r.p_machine_id
        if machine_id is None and order_id in orders:
            machine_id = orders[order_id].machine_id
        found.append(
            Capture(
                tender="upi",
                payment_id=r.payment_id,
                provider_payment_id=r.id,
                order_id=order_id,
                machine_id=machine_id,
                amount=r.amount,
                currency=r.currency,
                at=as_utc(r.at),
                qr_code_id=r.qr_code_id,
                amount_refunded=r.amount_refunded,
                paid_ours=r.p_provider_payment_id == r.id,
            )
        )
    return found


async def refunds_since(conn: AsyncConnection, tenant_id: str, start: datetime) -> list[Refund]:
    """The tenant's refunds created from a day before ``start`` on (every status)."""
    since = (
        start - _REFUND_SLACK
        if start - datetime.min.replace(tzinfo=start.tzinfo) > _REFUND_SLACK
        else start
    )
    rows = await conn.execute(
        sa.select(t.refunds).where(
            t.refunds.c.tenant_id == tenant_id, t.refunds.c.created_at >= since
        )
    )
    return [_refund(r) for r in rows]


async def refunds_for(
    conn: AsyncConnection,
    tenant_id: str,
    order_ids: Sequence[str],
    payment_ids: Sequence[str],
    provider_payment_ids: Sequence[str],
) -> list[Refund]:
    """Every refund (any date, any status) of these orders or payments."""
    found: dict[str, Refund] = {}
    for column, ids in (
        (t.refunds.c.order_id, order_ids),
        (t.refunds.c.payment_id, payment_ids),
        (t.refunds.c.provider_payment_id, provider_payment_ids),
    ):
        for chunk in _chunks(ids):
            rows = await conn.execute(
                sa.select(t.refunds).where(t.refunds.c.tenant_id == tenant_id, column.in_(chunk))
            )
            found.update({r.id: _refund(r) for r in rows})
    return sorted(found.values(), key=lambda r: r.id)


def _refund(r: sa.Row[Any]) -> Refund:
    return Refund(
        id=r.id,
        order_id=r.order_id,
        payment_id=r.payment_id,
        provider_payment_id=r.provider_payment_id,
        amount=r.amount,
        currency=r.currency,
        reason=r.reason,
        status=r.status,
    )


async def captures_of_orders(
    conn: AsyncConnection, tenant_id: str, order_ids: Iterable[str]
) -> list[Capture]:
    """Every capture (any date) that paid one of these orders: sandbox payments, and provider
    payments naming the order or one of its cloud payments."""
    found: list[Capture] = []
    p, pp = t.payments, t.provider_payments
    for chunk in _chunks(order_ids):
        payments = (
            await conn.execute(
                sa.select(p).where(p.c.tenant_id == tenant_id, p.c.order_id.in_(chunk))
            )
        ).all()
        by_id = {r.id: r for r in payments}
        for r in payments:
            if r.provider == SANDBOX and r.status == "captured":
                found.append(
                    Capture(
                        tender=SANDBOX,
                        payment_id=r.id,
                        provider_payment_id=None,
                        order_id=r.order_id,
                        machine_id=r.machine_id,
                        amount=r.amount,
                        currency=r.currency,
                        at=as_utc(r.captured_at or r.updated_at),
                    )
                )
        condition: sa.ColumnElement[bool] = pp.c.order_id.in_(chunk)
        if by_id:
            condition = sa.or_(condition, pp.c.payment_id.in_(list(by_id)))
        rows = await conn.execute(
            sa.select(pp).where(
                pp.c.tenant_id == tenant_id,
                pp.c.provider != SANDBOX,
                pp.c.status.in_(CAPTURED_STATUSES),
                condition,
            )
        )
        for r in rows:
            paid = by_id.get(r.payment_id or "")
            found.append(
                Capture(
                    tender="upi",
                    payment_id=r.payment_id,
                    provider_payment_id=r.id,
                    order_id=r.order_id or (paid.order_id if paid else None),
                    machine_id=paid.machine_id if paid else None,
                    amount=r.amount,
                    currency=r.currency,
                    at=as_utc(r.captured_at or r.first_seen_at),
                    qr_code_id=r.qr_code_id,
                    amount_refunded=r.amount_refunded,
                    paid_ours=paid is not None and paid.provider_payment_id == r.id,
                )
            )
    return found


async def orders_of_qr_codes(
    conn: AsyncConnection, tenant_id: str, qr_code_ids: Iterable[str]
) -> dict[str, tuple[str, str]]:
    """The (cloud payment id, order id) each QR code was made for."""
    found: dict[str, tuple[str, str]] = {}
    for chunk in _chunks(qr_code_ids):
        rows = await conn.execute(
            sa.select(t.payments.c.provider_ref, t.payments.c.id, t.payments.c.order_id).where(
                t.payments.c.tenant_id == tenant_id, t.payments.c.provider_ref.in_(chunk)
            )
        )
        found.update({r.provider_ref: (r.id, r.order_id) for r in rows})
    return found


async def undispensed_values(conn: AsyncConnection, order_ids: Iterable[str]) -> dict[str, int]:
    """Per order, the price of its units that failed or whose outcome is unknown."""
    found: dict[str, int] = {}
    oi = t.order_items
    for chunk in _chunks(order_ids):
        rows = await conn.execute(
            sa.select(
                oi.c.order_id,
                sa.func.sum((oi.c.failed + oi.c.unknown) * oi.c.unit_price).label("value"),
            )
            .where(oi.c.order_id.in_(chunk))
            .group_by(oi.c.order_id)
        )
        found.update({r.order_id: int(r.value or 0) for r in rows})
    return found
