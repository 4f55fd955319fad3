"""The report, machine-credit and slot-switch models of the operator API."""

import datetime as dt
from typing import Annotated, Literal

from pydantic import Field, StrictInt

from cloud.models.common import MAX_SAFE_INT, Input, Output
from cloud.reports.period import QueryDay
from contracts.numbers import QUERY_INTEGER
from contracts.text import PRINTABLE

Tender = Literal["cash", "upi", "sandbox"]
IdFilter = Annotated[str, Field(max_length=64)]


class SettlementQuery(Input):
    from_: Annotated[QueryDay, Field(alias="from")]
    to: QueryDay
    site_id: IdFilter | None = None
    machine_id: IdFilter | None = None
    format: Literal["json", "csv"] = "json"


class SettlementRow(Output):
    """One day, machine and tender. Money in minor units (paise for INR); see
    ``cloud.reports.settlement`` for what each column counts."""

    day: dt.date
    site_id: str | None
    machine_id: str | None
    machine_name: str | None
    tender: Tender
    currency: str
    orders: int
    gross: int
    refunded: int
    refund_pending: int
    machine_credit: int
    net: int


class SettlementTotal(Output):
    currency: str
    tender: Tender | None  # None: every tender
    orders: int
    gross: int
    refunded: int
    refund_pending: int
    machine_credit: int
    net: int


class SettlementReport(Output):
    first_day: dt.date
    last_day: dt.date
    timezone: Literal["UTC"]
    site_id: str | None
    machine_id: str | None
    rows: list[SettlementRow]
    totals: list[SettlementTotal]  # per currency, every tender
    totals_by_tender: list[SettlementTotal]


MismatchKind = Literal[
    "payment_without_order",
    "order_paid_without_payment",
    "amount_mismatch",
    "refund_owed_not_made",
    "refund_made_twice",
]
MISMATCH_KINDS: tuple[MismatchKind, ...] = (
    "payment_without_order",
    "order_paid_without_payment",
    "amount_mismatch",
    "refund_owed_not_made",
    "refund_made_twice",
)


class ReconciliationQuery(Input):
    date: QueryDay
    site_id: IdFilter | None = None


class Mismatch(Output):
    kind: MismatchKind
    order_id: str | None = None
    payment_id: str | None = None  # the cloud's payment id
    provider_payment_id: str | None = None  # the provider's (Razorpay pay_...)
    refund_ids: list[str] = Field(default_factory=list)
    amount: int | None = None  # the money in question, minor units
    currency: str | None = None
    detail: str


class ReconciliationChecked(Output):
    provider_payments: int  # captured provider payments (and sandbox captures) of the day
    orders: int  # electronic orders of the day with money in
    refunds: int  # refunds looked at for those payments and orders


class ReconciliationReport(Output):
    date: dt.date
    timezone: Literal["UTC"]
    site_id: str | None
    verdict: Literal["balanced", "mismatches"]
    counts: dict[str, int]  # every kind, 0 included
    checked: ReconciliationChecked
    mismatches: list[Mismatch]


class CreditQuery(Input):
    limit: Annotated[StrictInt, Field(ge=1, le=200), QUERY_INTEGER] = 50
    offset: Annotated[StrictInt, Field(ge=0, le=MAX_SAFE_INT), QUERY_INTEGER] = 0


class CreditEntryOut(Output):
    entry_id: str
    order_id: str | None
    credit_id: str | None
    currency: str
    delta: int
    balance: int
    reason: str
    occurred_at: dt.datetime
    received_at: dt.datetime


class MachineCredit(Output):
    """Cash a machine holds as free credit (no coin return): the next cash order there uses it."""

    machine_id: str
    currency: str
    balance: int  # the sum of every credit entry's delta the cloud has received
    last_balance_reported: int | None  # what the gateway counted after its latest entry
    last_reported_at: dt.datetime | None
    entries_total: int
    entries: list[CreditEntryOut]  # newest first, paged by limit and offset


class SlotSwitch(Input):
    """Why the operator switches the slot (kept in the operator audit)."""

    note: Annotated[str, Field(max_length=1000), PRINTABLE] | None = None
