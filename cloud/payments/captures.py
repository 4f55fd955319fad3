"""A payment the provider says it took (webhook or poll), applied to ours exactly once.

Every provider payment is recorded in ``provider_payments`` (reconciliation matches each to one
order). It is matched to our payment by the QR code (``payments.provider_ref``) or the
``payment_id`` note we put on the QR code (the provider copies a QR code's notes to its payments),
within the tenant only. Then, with our payment row locked:

- ours still ``created`` (or ``failed``: given up on) and the amount and currency agree ->
  ``captured`` with the provider payment's id, and a ``payment.update`` for the site's gateways
  (the gateway dispenses, or, for an order it already cancelled, refunds it as unserved);
- the cloud's mirror of the order already shows it ended without this payment (cancelled, or
  settled by cash or another payment) -> also ``rf-<payment_id>-unserved`` for the whole amount,
  the id the gateway would use, so the two deciding it make one refund;
- ours already captured by the SAME provider payment -> nothing (a redelivery, a poll after the
  webhook);
- ours already captured by ANOTHER provider payment -> that one is refunded whole
  (``rf-<provider_payment_id>-duplicate``);
- the amount or currency is not ours -> not marked paid (the order is not served for money it
  was not priced at) and refunded whole at once (``rf-<provider_payment_id>-mismatch``, reason
  ``unmatched``); with fixed-amount QR codes this should never happen, so it is logged loudly;
- it matches nothing of ours -> recorded only. Never refunded automatically: the merchant
  account may take payments for other business; reconciliation lists it for an operator.

A provider payment is refunded at most once by these rules whatever order and however often its
events arrive: the refund ids are derived from it, and an existing duplicate/mismatch refund of
it stops a second.
"""

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.db import schema as t
from cloud.db.times import utcnow
from cloud.payments.refunds import (
    SOURCE_CLOUD,
    NewRefund,
    duplicate_id,
    insert_ignore,
    mismatch_id,
    record_refund,
    unserved_id,
)
from cloud.sync.outbox import enqueue, site_gateways
from contracts.orders import TERMINAL_ORDER_STATUSES, OrderStatus, PaymentMethod, RefundReason
from contracts.sync import PaymentUpdate

log = logging.getLogger(__name__)

RAZORPAY = "razorpay"
# Provider ids end up in refund ids and URL paths: letters, digits and "_" only.
_PROVIDER_ID = re.compile(r"^[A-Za-z0-9_]{4,60}$")
# A provider payment in this state holds the customer's money now. One already "refunded" (by us
# or by hand in the provider's dashboard) is recorded, never served or refunded again.
_RECEIVED = ("captured",)
# Provider payment states only move forward (a late "authorized" never hides a "captured").
_RANK = {"created": 0, "authorized": 1, "failed": 1, "captured": 2, "refunded": 3}
_TERMINAL = frozenset(s.value for s in TERMINAL_ORDER_STATUSES)


@dataclass(frozen=True)
class Settled:
    """What applying one provider payment did: ``outcome`` is one of ``captured``,
    ``captured_unserved``, ``already_captured``, ``duplicate``, ``amount_mismatch``,
    ``unmatched``, ``recorded`` (not money received: failed, authorized), ``invalid``."""

    outcome: str
    payment_id: str | None = None  # ours, when it matched
    wake: list[str] = field(default_factory=list)
    refund_ids: list[str] = field(default_factory=list)


def _notes(entity: dict[str, Any] | None) -> dict[str, Any]:
    notes = entity.get("notes") if entity else None
    return notes if isinstance(notes, dict) else {}


def _int(entity: dict[str, Any], key: str) -> int | None:
    value = entity.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(entity: dict[str, Any] | None, key: str) -> str | None:
    value = entity.get(key) if entity else None
    return value if isinstance(value, str) and value else None


def _ts(entity: dict[str, Any], key: str) -> datetime | None:
    value = _int(entity, key)
    return datetime.fromtimestamp(value, tz=UTC) if value is not None else None


async def _ours(
    conn: AsyncConnection, tenant_id: str, provider: str, qr_id: str | None, note_id: str | None
) -> Any:
    """Our payment the provider payment belongs to: by its QR code, else by our note, within the
    tenant and provider (a note naming another tenant's payment matches nothing)."""
    base = sa.select(t.payments).where(
        t.payments.c.tenant_id == tenant_id, t.payments.c.provider == provider
    )
    if qr_id is not None:
        row = (await conn.execute(base.where(t.payments.c.provider_ref == qr_id))).first()
        if row is not None:
            return row
    if note_id is not None and len(note_id) <= 36:
        return (await conn.execute(base.where(t.payments.c.id == note_id))).first()
    return None


async def _record(
    conn: AsyncConnection,
    tenant_id: str,
    provider: str,
    entity: dict[str, Any],
    amount: int,
    currency: str,
    qr_id: str | None,
    ours: Any,
    source: str,
) -> bool:
    """Upsert the provider payment; False when its id is already another tenant's."""
    now = utcnow()
    pay_id = str(entity["id"])
    status = _str(entity, "status") or "created"
    received = status in ("captured", "refunded")
    captured_at = (_ts(entity, "created_at") or now) if received else None
    await insert_ignore(
        conn,
        t.provider_payments,
        "id",
        {
            "id": pay_id,
            "tenant_id": tenant_id,
            "provider": provider,
            "payment_id": ours.id if ours is not None else None,
            "qr_code_id": qr_id,
            "order_id": ours.order_id if ours is not None else None,
            "amount": amount,
            "currency": currency,
            "status": status,
            "method": (_str(entity, "method") or "")[:32] or None,
            "amount_refunded": max(0, _int(entity, "amount_refunded") or 0),
            "source": source,
            "captured_at": captured_at,
            "first_seen_at": now,
            "updated_at": now,
        },
    )
    row = (
        await conn.execute(sa.select(t.provider_payments).where(t.provider_payments.c.id == pay_id))
    ).one()
    if row.tenant_id != tenant_id:
        log.error(
            "provider payment %s arrived for tenant %s but is another's; ignored", pay_id, tenant_id
        )
        return False
    values: dict[str, Any] = {}
    if _RANK.get(status, 0) > _RANK.get(row.status, 0):
        values["status"] = status
    refunded = _int(entity, "amount_refunded") or 0
    if refunded > row.amount_refunded:
        values["amount_refunded"] = refunded
    if row.captured_at is None and captured_at is not None:
        values["captured_at"] = captured_at
    if row.qr_code_id is None and qr_id is not None:
        values["qr_code_id"] = qr_id
    if row.payment_id is None and ours is not None:
        values |= {"payment_id": ours.id, "order_id": ours.order_id}
    if values:
        values["updated_at"] = now
        await conn.execute(
            t.provider_payments.update().where(t.provider_payments.c.id == pay_id).values(**values)
        )
    return True


async def note_provider_payment(
    conn: AsyncConnection, tenant_id: str, entity: dict[str, Any]
) -> None:
    """Bring a provider payment we already recorded up to date (its refunded amount and status,
    from a refund event's payment entity) without applying it as a capture again."""
    pay_id = _str(entity, "id")
    if pay_id is None:
        return
    row = (
        await conn.execute(
            sa.select(t.provider_payments).where(
                t.provider_payments.c.id == pay_id, t.provider_payments.c.tenant_id == tenant_id
            )
        )
    ).first()
    if row is None:
        return
    values: dict[str, Any] = {}
    status = _str(entity, "status") or ""
    if _RANK.get(status, 0) > _RANK.get(row.status, 0):
        values["status"] = status
    refunded = _int(entity, "amount_refunded") or 0
    if refunded > row.amount_refunded:
        values["amount_refunded"] = refunded
    if values:
        await conn.execute(
            t.provider_payments.update()
            .where(t.provider_payments.c.id == pay_id)
            .values(**values, updated_at=utcnow())
        )


async def _lock(conn: AsyncConnection, payment_id: str) -> Any:
    query = sa.select(t.payments).where(t.payments.c.id == payment_id)
    if conn.dialect.name == "postgresql":
        # The snapshot that cancels the order locks the same row: whichever commits second sees
        # the other's change, so one of them decides the unserved refund.
        query = query.with_for_update()
    return (await conn.execute(query)).one()


async def order_ended_without(conn: AsyncConnection, payment: Any) -> bool:
    """Whether the cloud's mirror of the payment's order shows it ended without this payment's
    money: cancelled (or expired, which the gateway records as cancelled), or finished on cash or
    on another payment. Unknown orders (not synced yet) are the gateway's to decide."""
    order = (
        await conn.execute(
            sa.select(t.orders.c.status, t.orders.c.payment_method, t.orders.c.payment_id).where(
                t.orders.c.id == payment.order_id, t.orders.c.tenant_id == payment.tenant_id
            )
        )
    ).first()
    if order is None or order.status not in _TERMINAL:
        return False
    if order.status == OrderStatus.CANCELLED.value:
        return True
    if order.payment_method == PaymentMethod.CASH.value:
        return True
    return order.payment_id is not None and order.payment_id != payment.id


async def refund_unserved(conn: AsyncConnection, payment: Any) -> tuple[str | None, list[str]]:
    """``rf-<payment_id>-unserved`` for a captured payment whose order ended without it."""
    if payment.status != "captured" or not await order_ended_without(conn, payment):
        return None, []
    refund_id = unserved_id(payment.id)
    created, woken = await record_refund(
        conn,
        NewRefund(
            id=refund_id,
            tenant_id=payment.tenant_id,
            site_id=payment.site_id,
            machine_id=payment.machine_id,
            order_id=payment.order_id,
            payment_id=payment.id,
            provider=payment.provider,
            provider_payment_id=payment.provider_payment_id,
            amount=payment.amount,
            currency=payment.currency,
            reason=RefundReason.UNSERVED,
            source=SOURCE_CLOUD,
        ),
    )
    if created:
        log.warning(
            "payment %s (%s paise) captured for order %s which had already ended: refunding it",
            payment.id,
            payment.amount,
            payment.order_id,
        )
    return refund_id, woken


async def _refund_extra(
    conn: AsyncConnection,
    ours: Any,
    pay_id: str,
    amount: int,
    currency: str,
    reason: RefundReason,
    refund_id: str,
) -> list[str]:
    """Refund a provider payment that must not pay for ``ours`` (a second payment, a wrong
    amount) — once: no second refund of the same provider payment under another rule."""
    earlier = await conn.scalar(
        sa.select(t.refunds.c.id).where(
            t.refunds.c.tenant_id == ours.tenant_id,
            t.refunds.c.provider_payment_id == pay_id,
            t.refunds.c.reason.in_([RefundReason.DUPLICATE.value, RefundReason.UNMATCHED.value]),
        )
    )
    if earlier is not None:
        return []
    _, woken = await record_refund(
        conn,
        NewRefund(
            id=refund_id,
            tenant_id=ours.tenant_id,
            site_id=ours.site_id,
            machine_id=ours.machine_id,
            order_id=ours.order_id,
            payment_id=ours.id,
            provider=ours.provider,
            provider_payment_id=pay_id,
            amount=amount,
            currency=currency,
            reason=reason,
            source=SOURCE_CLOUD,
        ),
    )
    return woken


async def settle_provider_payment(
    conn: AsyncConnection,
    tenant_id: str,
    payment: dict[str, Any],
    qr_code: dict[str, Any] | None,
    source: str,
    *,
    provider: str = RAZORPAY,
) -> Settled:
    """Apply one provider payment entity (and the QR code entity it came with, if any) inside
    the caller's transaction; see the module docstring for the rules."""
    pay_id = _str(payment, "id")
    amount = _int(payment, "amount")
    currency = (_str(payment, "currency") or "").upper()
    if pay_id is None or not _PROVIDER_ID.match(pay_id) or amount is None or amount <= 0:
        return Settled("invalid")
    if len(currency) != 3:
        return Settled("invalid")
    qr_id = _str(qr_code, "id") or _str(payment, "qr_code_id")
    if qr_id is not None and not _PROVIDER_ID.match(qr_id):
        qr_id = None
    notes = _notes(qr_code) | _notes(payment)
    note_id = notes.get("payment_id") if isinstance(notes.get("payment_id"), str) else None
    ours = await _ours(conn, tenant_id, provider, qr_id, note_id)
    if not await _record(conn, tenant_id, provider, payment, amount, currency, qr_id, ours, source):
        return Settled("invalid")
    if (_str(payment, "status") or "") not in _RECEIVED:
        return Settled("recorded", ours.id if ours is not None else None)
    if ours is None:
        log.warning(
            "provider payment %s (%s paise) matches no payment of tenant %s; left for "
            "reconciliation",
            pay_id,
            amount,
            tenant_id,
        )
        return Settled("unmatched")
    ours = await _lock(conn, ours.id)
    if ours.provider_payment_id == pay_id or (
        ours.status == "captured" and ours.provider_payment_id is None
    ):
        if ours.provider_payment_id is None:
            await conn.execute(
                t.payments.update()
                .where(t.payments.c.id == ours.id)
                .values(provider_payment_id=pay_id, updated_at=utcnow())
            )
            ours = await _lock(conn, ours.id)
        refund_id, woken = await refund_unserved(conn, ours)
        return Settled("already_captured", ours.id, woken, [refund_id] if refund_id else [])
    if amount != ours.amount or currency != ours.currency:
        log.error(
            "provider payment %s paid %s paise %s for payment %s of %s paise %s: not marked "
            "paid, refunded",
            pay_id,
            amount,
            currency,
            ours.id,
            ours.amount,
            ours.currency,
        )
        await conn.execute(
            t.payments.update()
            .where(t.payments.c.id == ours.id)
            .values(
                failure_reason=f"paid {amount} {currency} instead of {ours.amount}; refunded"[:200],
                updated_at=utcnow(),
            )
        )
        refund_id = mismatch_id(pay_id)
        woken = await _refund_extra(
            conn, ours, pay_id, amount, currency, RefundReason.UNMATCHED, refund_id
        )
        return Settled("amount_mismatch", ours.id, woken, [refund_id])
    if ours.status == "captured":
        log.warning(
            "payment %s was already paid by %s; refunding the second payment %s (%s paise)",
            ours.id,
            ours.provider_payment_id,
            pay_id,
            amount,
        )
        refund_id = duplicate_id(pay_id)
        woken = await _refund_extra(
            conn, ours, pay_id, amount, currency, RefundReason.DUPLICATE, refund_id
        )
        return Settled("duplicate", ours.id, woken, [refund_id])
    now = utcnow()
    await conn.execute(
        t.payments.update()
        .where(t.payments.c.id == ours.id)
        .values(
            status="captured",
            provider_payment_id=pay_id,
            captured_at=now,
            updated_at=now,
            failure_reason=None,
        )
    )
    ours = await _lock(conn, ours.id)
    update = PaymentUpdate(
        payment_id=ours.id,
        order_id=ours.order_id,
        machine_id=ours.machine_id,
        status="captured",
        amount=ours.amount,
        currency=ours.currency,
        provider=ours.provider,
        provider_payment_id=pay_id,
    )
    targets = await site_gateways(conn, ours.site_id)
    await enqueue(conn, targets, "payment.update", update.model_dump(mode="json"))
    refund_id, woken = await refund_unserved(conn, ours)
    outcome = "captured_unserved" if refund_id else "captured"
    return Settled(outcome, ours.id, [*targets, *woken], [refund_id] if refund_id else [])


async def apply_provider_payment(
    conn: AsyncConnection,
    tenant_id: str,
    payment: dict[str, Any],
    qr_code: dict[str, Any] | None,
    source: str,
) -> list[str]:
    """``settle_provider_payment`` for callers that only need the gateways to wake (the poller)."""
    return (await settle_provider_payment(conn, tenant_id, payment, qr_code, source)).wake
