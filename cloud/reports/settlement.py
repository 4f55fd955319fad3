"""The settlement report: per UTC day, machine and tender, what came in and what it became.

Columns (money in minor units of the row's currency, paise for INR):

- ``orders``: orders with money in. Cash: cash orders created that day with a paid amount above
  zero (a cancelled order gives its cash back to machine credit, so it has none). UPI/sandbox:
  the distinct orders the day's captured payments paid.
- ``gross``: money received. Cash: every coin and note the machine accepted that day (cash
  credits, timed when the gateway recorded them), including cash beyond an order's total and
  cash inserted with no order. UPI: every payment the provider captured that day (Razorpay
  payments in status captured or refunded), including duplicates and payments that match no
  order. Sandbox: the sandbox payments captured that day.
- ``refunded``: refunds the provider completed (status ``refunded``, including refunds an
  operator resolved as paid back by hand) for the payments in ``gross``, whenever they were made.
- ``refund_pending``: refunds owed for those payments and not completed yet (``pending``,
  ``failed`` being retried, ``manual_review``). Voided refunds (nothing was owed) count in
  neither. Both refund columns are always 0 for cash: cash has no refunds.
- ``machine_credit``: cash only, 0 otherwise. The change in the cash the machine holds as free
  credit for the next customer: ``gross`` minus what the day's cash orders kept. It grows with
  overpaid cash, cash of cancelled orders, cash inserted without an order and the cash value of
  units that did not come out (orders' ``credit_amount``); it shrinks (can be negative) when
  orders used credit inserted on earlier days.
- ``net``: ``gross - refunded - refund_pending - machine_credit``: what the tenant keeps. For
  cash it equals the day's cash orders' paid amounts less their ``credit_amount``; for UPI it
  includes payments that match no order until an operator refunds them (reconciliation lists
  them).

Refunds belong to the row of the payment they return, so a report run again later shows the
refunds made since. Captured payments that match no machine have no machine or site and
appear only when neither ``site_id`` nor ``machine_id`` is given.
"""

import csv
import io
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.db import schema as t
from cloud.reports import sources
from cloud.reports.models import (
    SettlementQuery,
    SettlementReport,
    SettlementRow,
    SettlementTotal,
    Tender,
)
from cloud.reports.period import day_of, day_range
from contracts.orders import PaymentMethod, RefundStatus

_Key = tuple[date, str | None, Tender, str]  # day, machine, tender, currency


@dataclass
class _Sums:
    orders: set[str] = field(default_factory=set)
    gross: int = 0
    refunded: int = 0
    refund_pending: int = 0
    # cash only: paid amounts of the day's cash orders and their cash returned to credit
    cash_paid: int = 0
    cash_credited: int = 0


async def settlement(
    conn: AsyncConnection, tenant_id: str, query: SettlementQuery
) -> SettlementReport:
    start, end = day_range(query.from_, query.to)
    machines = await sources.machines(conn, tenant_id)
    sums: dict[_Key, _Sums] = defaultdict(_Sums)

    captures = await sources.captures(conn, tenant_id, start, end)
    by_provider_payment = {c.provider_payment_id: c for c in captures if c.provider_payment_id}
    by_payment: dict[str, sources.Capture] = {}
    for capture in sorted(captures, key=lambda c: c.at):
        if capture.payment_id is not None:
            # A cloud payment paid twice: its refunds without a provider payment id belong to
            # the first capture.
            by_payment.setdefault(capture.payment_id, capture)
    for capture in captures:
        entry = sums[
            (day_of(capture.at), capture.machine_id, _tender(capture.tender), capture.currency)
        ]
        entry.gross += capture.amount
        if capture.order_id is not None:
            entry.orders.add(capture.order_id)
    for refund in await sources.refunds_since(conn, tenant_id, start):
        if refund.status == RefundStatus.VOIDED.value:
            continue
        paid = by_provider_payment.get(refund.provider_payment_id or "") or by_payment.get(
            refund.payment_id or ""
        )
        if paid is None:
            continue  # returns a payment outside the period
        entry = sums[(day_of(paid.at), paid.machine_id, _tender(paid.tender), paid.currency)]
        if refund.status == RefundStatus.REFUNDED.value:
            entry.refunded += refund.amount
        else:
            entry.refund_pending += refund.amount

    await _cash(conn, tenant_id, start, end, sums)
    rows = [
        _row(key, entry, machines)
        for key, entry in sums.items()
        if _wanted(key[1], query, machines)
    ]
    rows.sort(
        key=lambda r: (
            r.day,
            r.machine_name is None,
            r.machine_name or "",
            r.machine_id or "",
            r.tender,
        )
    )
    return SettlementReport(
        first_day=query.from_,
        last_day=query.to,
        timezone="UTC",
        site_id=query.site_id,
        machine_id=query.machine_id,
        rows=rows,
        totals=_totals(rows, by_tender=False),
        totals_by_tender=_totals(rows, by_tender=True),
    )


def _tender(value: str) -> Tender:
    return "sandbox" if value == sources.SANDBOX else "upi"


async def _cash(
    conn: AsyncConnection, tenant_id: str, start: object, end: object, sums: dict[_Key, _Sums]
) -> None:
    orders = await conn.execute(
        sa.select(
            t.orders.c.id,
            t.orders.c.machine_id,
            t.orders.c.currency,
            t.orders.c.paid_amount,
            t.orders.c.credit_amount,
            t.orders.c.created_at,
        ).where(
            t.orders.c.tenant_id == tenant_id,
            t.orders.c.payment_method == PaymentMethod.CASH.value,
            t.orders.c.paid_amount > 0,
            t.orders.c.created_at >= start,
            t.orders.c.created_at < end,
        )
    )
    for o in orders:
        entry = sums[(day_of(o.created_at), o.machine_id, "cash", o.currency)]
        entry.orders.add(o.id)
        entry.cash_paid += o.paid_amount
        entry.cash_credited += o.credit_amount
    cc, ev = t.cash_credits, t.sync_events
    # When the gateway recorded the coin (its outbox event id is the credit id); the cloud's
    # receive time when that event is not found (it is late only if the gateway was offline).
    at = sa.func.coalesce(ev.c.occurred_at, cc.c.received_at)
    credits = await conn.execute(
        sa.select(cc.c.machine_id, cc.c.currency, cc.c.amount, at.label("at"))
        .select_from(
            cc.outerjoin(ev, sa.and_(ev.c.event_id == cc.c.credit_id, ev.c.type == "cash.credit"))
        )
        .where(cc.c.tenant_id == tenant_id, at >= start, at < end)
    )
    for c in credits:
        sums[(day_of(c.at), c.machine_id, "cash", c.currency)].gross += c.amount


def _wanted(
    machine_id: str | None, query: SettlementQuery, machines: dict[str, sources.Machine]
) -> bool:
    if query.machine_id is None and query.site_id is None:
        return True
    machine = machines.get(machine_id or "")
    if machine is None:
        return False
    if query.machine_id is not None and machine.id != query.machine_id:
        return False
    return query.site_id is None or machine.site_id == query.site_id


def _row(key: _Key, entry: _Sums, machines: dict[str, sources.Machine]) -> SettlementRow:
    day, machine_id, tender, currency = key
    machine = machines.get(machine_id or "")
    if tender == "cash":
        net = entry.cash_paid - entry.cash_credited
        credit = entry.gross - net
    else:
        net = entry.gross - entry.refunded - entry.refund_pending
        credit = 0
    return SettlementRow(
        day=day,
        site_id=machine.site_id if machine else None,
        machine_id=machine_id,
        machine_name=machine.name if machine else None,
        tender=tender,
        currency=currency,
        orders=len(entry.orders),
        gross=entry.gross,
        refunded=entry.refunded,
        refund_pending=entry.refund_pending,
        machine_credit=credit,
        net=net,
    )


def _totals(rows: list[SettlementRow], *, by_tender: bool) -> list[SettlementTotal]:
    totals: dict[tuple[str, Tender | None], SettlementTotal] = {}
    for row in rows:
        key = (row.currency, row.tender if by_tender else None)
        total = totals.get(key)
        if total is None:
            total = totals[key] = SettlementTotal(
                currency=row.currency,
                tender=key[1],
                orders=0,
                gross=0,
                refunded=0,
                refund_pending=0,
                machine_credit=0,
                net=0,
            )
        total.orders += row.orders
        total.gross += row.gross
        total.refunded += row.refunded
        total.refund_pending += row.refund_pending
        total.machine_credit += row.machine_credit
        total.net += row.net
    return [totals[k] for k in sorted(totals, key=lambda k: (k[0], k[1] or ""))]


CSV_COLUMNS = (
    "day",
    "site_id",
    "machine_id",
    "machine_name",
    "tender",
    "currency",
    "orders",
    "gross_paise",
    "refunded_paise",
    "refund_pending_paise",
    "machine_credit_paise",
    "net_paise",
)
_MONEY = ("orders", "gross", "refunded", "refund_pending", "machine_credit", "net")
# A cell a spreadsheet would run as a formula (machine names are operators' free text).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: str | None) -> str:
    text = value or ""
    return "'" + text if text.startswith(_FORMULA_START) else text


def to_csv(report: SettlementReport) -> str:
    """The rows, then one ``total`` row per currency (tender ``all``). Amounts are integers in
    minor units (paise for INR); no rupee column, so nothing is rounded."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in report.rows:
        writer.writerow(
            [
                row.day.isoformat(),
                row.site_id or "",
                row.machine_id or "",
                _cell(row.machine_name),
                row.tender,
                row.currency,
                *[getattr(row, name) for name in _MONEY],
            ]
        )
    for total in report.totals:
        writer.writerow(
            ["total", "", "", "", "all", total.currency, *[getattr(total, n) for n in _MONEY]]
        )
    return out.getvalue()


def csv_filename(report: SettlementReport) -> str:
    return f"settlement-{report.first_day.isoformat()}-to-{report.last_day.isoformat()}.csv"
