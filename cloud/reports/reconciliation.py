"""The reconciliation report of one UTC day: every electronic payment a provider captured that
day is matched to exactly one order, and every mismatch is listed with the ids to act on.

What is checked, and which day it belongs to:

- a capture belongs to the day it was captured (UPI: Razorpay payments in status captured or
  refunded; sandbox: the cloud's sandbox payments in status captured, as the sandbox has no
  provider record);
- an order belongs to the day it was created (electronic orders only: cash has no provider).

Kinds:

- ``payment_without_order``: a capture that names no order the cloud knows (not our QR code, or
  the order never synced). Not refunded automatically; not listed once refunds in full were
  made for it.
- ``order_paid_without_payment``: an order with a paid amount and no capture at all.
- ``amount_mismatch``: the capture that paid an order (its first) is not the order's paid
  amount (or the order still shows nothing paid).
- ``refund_owed_not_made``: money owed back is not all refunded yet. Owed: the whole amount of
  a capture on a cancelled order (``unserved``) or of a second capture of one order
  (``duplicate``); for a finished order, the price of its units that failed or whose outcome is
  unknown. Refunds an operator voided (nothing owed) lower what is owed. Refunds still
  ``pending``, ``failed`` (being retried) or held in ``manual_review`` are listed by id.
- ``refund_made_twice``: more was refunded than owed (for a capture or for an order's
  undispensed units), more than the capture took, or the provider reports more refunded than
  was captured.
"""

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.db import schema as t
from cloud.reports import sources
from cloud.reports.models import (
    MISMATCH_KINDS,
    Mismatch,
    ReconciliationChecked,
    ReconciliationQuery,
    ReconciliationReport,
)
from cloud.reports.period import day_range
from cloud.reports.sources import Capture, Refund
from contracts.orders import ELECTRONIC_METHODS, OrderStatus, RefundReason, RefundStatus

_FINISHED = frozenset(
    {
        OrderStatus.COMPLETED.value,
        OrderStatus.PARTIALLY_COMPLETED.value,
        OrderStatus.FAILED.value,
        OrderStatus.REFUND_PENDING.value,
    }
)
# Refunds that return a capture as a whole; undispensed (and held) refunds return an order's
# units.
_PAYMENT_REASONS = frozenset(
    {RefundReason.UNSERVED.value, RefundReason.DUPLICATE.value, RefundReason.UNMATCHED.value}
)


@dataclass(frozen=True)
class _Tally:
    refunded: int
    voided: int
    open: list[Refund]

    @classmethod
    def of(cls, refunds: Iterable[Refund]) -> "_Tally":
        items = list(refunds)
        return cls(
            refunded=sum(r.amount for r in items if r.status == RefundStatus.REFUNDED.value),
            voided=sum(r.amount for r in items if r.status == RefundStatus.VOIDED.value),
            open=[r for r in items if r.status in sources.OPEN_REFUND_STATUSES],
        )


def _describe_open(open_refunds: list[Refund]) -> str:
    if not open_refunds:
        return "no refund was requested"
    return "not refunded yet: " + ", ".join(f"{r.id} ({r.status})" for r in open_refunds)


async def reconciliation(
    conn: AsyncConnection, tenant_id: str, query: ReconciliationQuery
) -> ReconciliationReport:
    start, end = day_range(query.date, query.date)
    machines = await sources.machines(conn, tenant_id)
    day_captures = await sources.captures(conn, tenant_id, start, end)
    await _match_qr_codes(conn, tenant_id, day_captures)

    day_orders = {
        r.id: r
        for r in await conn.execute(
            sa.select(t.orders).where(
                t.orders.c.tenant_id == tenant_id,
                t.orders.c.payment_method.in_([m.value for m in ELECTRONIC_METHODS]),
                t.orders.c.created_at >= start,
                t.orders.c.created_at < end,
            )
        )
    }
    orders = dict(day_orders)
    orders.update(
        await sources.orders_by_id(
            conn, tenant_id, {c.order_id for c in day_captures if c.order_id} - set(orders)
        )
    )

    def site_of(capture: Capture) -> str | None:
        order = orders.get(capture.order_id or "")
        if order is not None:
            return str(order.site_id)
        machine = machines.get(capture.machine_id or "")
        return machine.site_id if machine else None

    if query.site_id is not None:
        day_captures = [c for c in day_captures if site_of(c) == query.site_id]
        day_orders = {k: o for k, o in day_orders.items() if o.site_id == query.site_id}

    # Every capture of the orders in question, whatever its day: which one paid an order and
    # which are its duplicates depends on all of them.
    all_captures: dict[tuple[str, str], Capture] = {(c.tender, c.key): c for c in day_captures}
    related = set(day_orders) | {
        c.order_id for c in day_captures if c.order_id is not None and c.order_id in orders
    }
    for capture in await sources.captures_of_orders(conn, tenant_id, related):
        all_captures.setdefault((capture.tender, capture.key), capture)
    by_order: dict[str, list[Capture]] = defaultdict(list)
    for capture in all_captures.values():
        if capture.order_id is not None and capture.order_id in orders:
            by_order[capture.order_id].append(capture)
    for order_id, caps in by_order.items():
        paid_with = orders[order_id].payment_id
        # The capture that paid the order's own payment comes first; any other is owed back.
        caps.sort(key=lambda c: (not c.paid_ours, c.payment_id != paid_with, c.at, c.key))

    refunds = await sources.refunds_for(
        conn,
        tenant_id,
        order_ids=sorted(related),
        payment_ids=sorted({c.payment_id for c in all_captures.values() if c.payment_id}),
        provider_payment_ids=sorted(
            {c.provider_payment_id for c in all_captures.values() if c.provider_payment_id}
        ),
    )

    found: list[Mismatch] = []
    for capture in sorted(day_captures, key=lambda c: (c.at, c.key)):
        found.extend(_check_capture(capture, orders, by_order, refunds))
    undispensed = await sources.undispensed_values(conn, day_orders)
    for order in sorted(day_orders.values(), key=lambda o: (o.created_at, o.id)):
        found.extend(_check_order(order, by_order.get(order.id, []), refunds, undispensed))

    counts = {kind: 0 for kind in MISMATCH_KINDS}
    for mismatch in found:
        counts[mismatch.kind] += 1
    return ReconciliationReport(
        date=query.date,
        timezone="UTC",
        site_id=query.site_id,
        verdict="mismatches" if found else "balanced",
        counts=counts,
        checked=ReconciliationChecked(
            provider_payments=len(day_captures), orders=len(day_orders), refunds=len(refunds)
        ),
        mismatches=found,
    )


async def _match_qr_codes(conn: AsyncConnection, tenant_id: str, captures: list[Capture]) -> None:
    """A provider payment recorded before it was tied to our payment still names its QR code."""
    loose = [c for c in captures if c.order_id is None and c.qr_code_id]
    if not loose:
        return
    owners = await sources.orders_of_qr_codes(conn, tenant_id, {c.qr_code_id or "" for c in loose})
    for i, capture in enumerate(captures):
        owner = owners.get(capture.qr_code_id or "") if capture.order_id is None else None
        if owner is not None:
            captures[i] = replace(
                capture, payment_id=capture.payment_id or owner[0], order_id=owner[1]
            )


def _refunds_of_capture(capture: Capture, primary: bool, refunds: list[Refund]) -> list[Refund]:
    """Refunds that return money of this capture: those naming its provider payment, and (for
    the capture that paid the order) those naming only its cloud payment."""
    mine = []
    for refund in refunds:
        if capture.provider_payment_id is None:
            # sandbox: the cloud payment is the capture
            if refund.payment_id == capture.payment_id:
                mine.append(refund)
        elif refund.provider_payment_id is not None:
            if refund.provider_payment_id == capture.provider_payment_id:
                mine.append(refund)
        elif primary and refund.payment_id is not None and refund.payment_id == capture.payment_id:
            mine.append(refund)
    return mine


def _ids(capture: Capture, **extra: Any) -> dict[str, Any]:
    return {
        "order_id": capture.order_id,
        "payment_id": capture.payment_id,
        "provider_payment_id": capture.provider_payment_id,
        "currency": capture.currency,
    } | extra


def _check_capture(
    capture: Capture,
    orders: dict[str, sa.Row[Any]],
    by_order: dict[str, list[Capture]],
    refunds: list[Refund],
) -> list[Mismatch]:
    found: list[Mismatch] = []
    order = orders.get(capture.order_id or "")
    caps = by_order.get(capture.order_id or "", [])
    primary = bool(caps) and caps[0] is capture
    linked = _refunds_of_capture(capture, primary or order is None, refunds)
    whole = [r for r in linked if r.reason in _PAYMENT_REASONS]
    tally_all, tally_whole = _Tally.of(linked), _Tally.of(whole)
    what = f"{capture.tender} capture {capture.key} of {capture.amount}"

    if order is None:
        # Refunds made by hand in the provider's dashboard count too.
        refunded = max(tally_all.refunded, capture.amount_refunded)
        if refunded < capture.amount:
            why = (
                f"it names order {capture.order_id}, which the cloud has not received"
                if capture.order_id
                else "it names no order of ours (not one of our QR codes)"
            )
            found.append(
                Mismatch(
                    kind="payment_without_order",
                    amount=capture.amount - refunded,
                    refund_ids=[r.id for r in linked],
                    detail=f"{what}: {why}; refunded so far {refunded}",
                    **_ids(capture),
                )
            )
    else:
        owed, why = 0, ""
        if not primary:
            owed, why = capture.amount, f"a second payment of order {order.id}"
        elif order.status == OrderStatus.CANCELLED.value:
            owed, why = capture.amount, f"order {order.id} was cancelled before it was paid"
        elif capture.amount != order.paid_amount:
            if not capture.paid_ours:
                # Not taken as the payment (wrong amount): the cloud refunds it whole.
                owed, why = capture.amount, "it did not pay the order's payment"
            found.append(
                Mismatch(
                    kind="amount_mismatch",
                    amount=capture.amount,
                    detail=(
                        f"{what} paid order {order.id}, which shows {order.paid_amount} paid "
                        f"(status {order.status})"
                    ),
                    **_ids(capture),
                )
            )
        owed = max(0, owed - tally_whole.voided)
        if tally_whole.refunded < owed:
            found.append(
                Mismatch(
                    kind="refund_owed_not_made",
                    amount=owed - tally_whole.refunded,
                    refund_ids=[r.id for r in tally_whole.open],
                    detail=f"{what} is owed back ({why}); {_describe_open(tally_whole.open)}",
                    **_ids(capture),
                )
            )
        elif tally_whole.refunded > owed:
            found.append(
                Mismatch(
                    kind="refund_made_twice",
                    amount=tally_whole.refunded - owed,
                    refund_ids=[r.id for r in whole if r.status == RefundStatus.REFUNDED.value],
                    detail=f"{what}: {tally_whole.refunded} refunded as a whole, {owed} was owed",
                    **_ids(capture),
                )
            )
    over = max(tally_all.refunded, capture.amount_refunded) - capture.amount
    if over > 0:
        found.append(
            Mismatch(
                kind="refund_made_twice",
                amount=over,
                refund_ids=[r.id for r in linked if r.status == RefundStatus.REFUNDED.value],
                detail=(
                    f"{what}: refunds total {tally_all.refunded} (provider reports "
                    f"{capture.amount_refunded}), more than it took"
                ),
                **_ids(capture),
            )
        )
    return found


def _check_order(
    order: sa.Row[Any], caps: list[Capture], refunds: list[Refund], undispensed: dict[str, int]
) -> list[Mismatch]:
    found: list[Mismatch] = []
    ids = {"order_id": order.id, "payment_id": order.payment_id, "currency": order.currency}
    if order.paid_amount > 0 and not caps:
        found.append(
            Mismatch(
                kind="order_paid_without_payment",
                amount=order.paid_amount,
                detail=(
                    f"order {order.id} ({order.payment_method}, {order.status}) shows "
                    f"{order.paid_amount} paid, and no provider capture of it is recorded"
                ),
                **ids,
            )
        )
    if order.status not in _FINISHED or order.paid_amount == 0:
        return found
    units = [r for r in refunds if r.order_id == order.id and r.reason not in _PAYMENT_REASONS]
    tally = _Tally.of(units)
    value = min(undispensed.get(order.id, 0), order.paid_amount)
    owed = max(0, value - tally.voided)
    what = f"order {order.id} ({order.status}): {value} of units not dispensed"
    if tally.refunded < owed:
        found.append(
            Mismatch(
                kind="refund_owed_not_made",
                amount=owed - tally.refunded,
                refund_ids=[r.id for r in tally.open],
                detail=f"{what}, {tally.refunded} refunded; {_describe_open(tally.open)}",
                provider_payment_id=caps[0].provider_payment_id if caps else None,
                **ids,
            )
        )
    elif tally.refunded > owed:
        found.append(
            Mismatch(
                kind="refund_made_twice",
                amount=tally.refunded - owed,
                refund_ids=[r.id for r in units if r.status == RefundStatus.REFUNDED.value],
                detail=f"{what}, {tally.refunded} refunded for them",
                provider_payment_id=caps[0].provider_payment_id if caps else None,
                **ids,
            )
        )
    return found
