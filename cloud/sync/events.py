"""Applying a pushed batch of outbox events, each event on its own, all in one transaction.

Each event is validated and applied by itself: one the cloud cannot accept (contract) or apply
(the database refuses a value, a bug) goes to the dead letters (``cloud.sync.dead_letters``) and
is reported back in ``PushAck.rejected``, while the rest of the batch is stored and the
high-water mark passes it. What is refused for the whole batch: a malformed envelope (400) and
identity conflicts (409: a machine, order, event, command or credit id that belongs to another
site, gateway or machine), so nothing of another sender is ever touched.

Money events: a ``refund.request`` becomes a refund row (``cloud.payments.refunds`` sends it); a
``credit.entry`` a row of the machine's credit ledger; a ``slot.state`` the slot's state as the
gateway applied it. An order snapshot that ends an order asks for its unpaid QR code to be closed
(``payments.close_state = 'pending'``) and, when a payment was captured for an order that ended
without it, records the unserved refund (the same id the gateway uses, so one refund).
"""

import json
import logging
from dataclasses import dataclass, field
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cloud.db import schema as t
from cloud.db import sealed
from cloud.db.times import utcnow
from cloud.errors import Conflict, EventIdConflict, NotFound, ValidationFailed
from cloud.payments.captures import refund_unserved
from cloud.payments.refunds import SOURCE_GATEWAY, NewRefund, record_refund
from cloud.sync import dead_letters
from cloud.sync.dead_letters import (
    DeadLetterNotRetryable,
    DeadLetterStillFailing,
    Refusal,
)
from cloud.sync.hub import ChannelHub
from cloud.sync.identity import Gateway, gateway_active
from contracts.orders import TERMINAL_ORDER_STATUSES, RefundReason
from contracts.sync import (
    MAX_BATCH,
    CashCreditRecord,
    CreditEntry,
    DispenseRecord,
    InventoryChange,
    OrderSnapshot,
    OutboxEvent,
    PushAck,
    RefundRequest,
    RejectedEvent,
    SlotStateRecord,
)

log = logging.getLogger(__name__)

_PAYLOADS: dict[str, type[BaseModel]] = {
    "order.snapshot": OrderSnapshot,
    "dispense.result": DispenseRecord,
    "cash.credit": CashCreditRecord,
    "inventory.changed": InventoryChange,
    "refund.request": RefundRequest,
    "credit.entry": CreditEntry,
    "slot.state": SlotStateRecord,
}
# Refunds that give back a payment's own capture (not another provider payment's): together they
# never exceed the payment.
_OWN_REFUNDS = (RefundReason.UNDISPENSED.value, RefundReason.UNSERVED.value)

_RETRIES = 3
# How ``_store`` applies a batch: together (``_apply_bulk``), event by event without savepoints,
# or event by event each in a savepoint (after a failure, so the failing event alone is refused).
_BULK, _PLAIN, _ISOLATED = "bulk", "plain", "isolated"
_UNREAD = object()
# The reason the gateway records when a dispense command got no result in time; only such a
# record may later be corrected (the gateway re-sends it under event id ``{cmd_id}-late``).
_NO_RESULT = "no_result"


class _EnvelopeEvent(BaseModel):
    """What the cloud needs of every event before it can judge it alone: where it stands in the
    gateway's sequence (the high-water mark) and its id (dedupe, dead letters)."""

    model_config = ConfigDict(extra="allow")
    seq: Annotated[StrictInt, Field(gt=0, le=2**53)]
    event_id: Annotated[str, Field(min_length=8, max_length=64, pattern=r"^[\x21-\x7e]+$")]


class PushEnvelope(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: Annotated[list[_EnvelopeEvent], Field(min_length=1, max_length=MAX_BATCH)]


@dataclass(frozen=True)
class _Parsed:
    event: OutboxEvent
    payload: Any
    raw: Any  # as received: what a dead letter keeps


@dataclass(frozen=True)
class _Refused:
    seq: int
    event_id: str
    raw: Any
    refusal: Refusal


class _EventRefused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


class _EventUnapplicable(_EventRefused):
    """A valid event the cloud cannot apply as sent (a refund of a payment it does not know, or
    more than was paid): dead-lettered with this reason rather than a generic ``apply_failed``."""


@dataclass
class _Effects:
    """What to do once the batch is committed: gateways with new channel messages, workers to
    wake (a refund to send)."""

    gateways: set[str] = field(default_factory=set)
    workers: bool = False


def _has_nul(data: Any) -> bool:
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _describe(exc: ValidationError) -> str:
    # No input echo: the text goes to logs, API answers and the gateway's dead letters.
    parts = [
        f"{'.'.join(str(p) for p in e['loc']) or '(event)'}: {e['msg']}"
        for e in exc.errors(include_url=False, include_input=False, include_context=False)[:5]
    ]
    return "; ".join(parts)


def parse_event(raw: Any) -> _Parsed:
    """One event against the contract; raises ``_EventRefused`` (validation_error)."""
    if _has_nul(raw):
        # PostgreSQL text cannot hold NUL, so neither database may store it.
        raise _EventRefused(Refusal("validation_error", "the event contains a NUL character"))
    try:
        event = OutboxEvent.model_validate(raw)
        payload = _PAYLOADS[event.type].model_validate(event.payload)
    except ValidationError as exc:
        type_ = raw.get("type") if isinstance(raw, dict) else None
        # Name the type only when it is one we know: the message must not echo input.
        known = isinstance(type_, str) and type_ in _PAYLOADS
        what = f"invalid {type_} event" if known else "invalid event"
        raise _EventRefused(
            Refusal("validation_error", f"{what}: {_describe(exc)}"[:1000])
        ) from exc
    return _Parsed(event, payload, raw)


def _parse(envelope: PushEnvelope, body: Any) -> list[_Parsed | _Refused]:
    items: list[_Parsed | _Refused] = []
    for head, raw in zip(envelope.events, body["events"], strict=True):
        try:
            items.append(parse_event(raw))
        except _EventRefused as exc:
            items.append(_Refused(head.seq, head.event_id, raw, exc.refusal))
    return items


def read_envelope(body: Any) -> PushEnvelope:
    """The batch-level check: a malformed envelope is still a 400 for the whole batch."""
    try:
        return PushEnvelope.model_validate(body)
    except ValidationError as exc:
        raise ValidationFailed(
            "invalid push batch",
            details=[
                {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                for e in exc.errors(include_url=False, include_input=False, include_context=False)
            ],
        ) from exc


async def _check_machines(conn: AsyncConnection, gateway: Gateway, events: list[_Parsed]) -> None:
    wanted = {p.payload.machine_id for p in events}
    if not wanted:
        return
    rows = await conn.execute(
        sa.select(t.machines.c.id).where(
            t.machines.c.id.in_(wanted), t.machines.c.site_id == gateway.site_id
        )
    )
    foreign = wanted - {r.id for r in rows}
    if foreign:
        raise Conflict(
            "events name machines that are not at this gateway's site",
            details={"machine_ids": sorted(foreign)},
        )


async def _apply_order(
    conn: AsyncConnection, gateway: Gateway, order: OrderSnapshot, effects: _Effects
) -> None:
    current = (
        await conn.execute(
            sa.select(t.orders.c.version, t.orders.c.site_id).where(t.orders.c.id == order.id)
        )
    ).first()
    if current is not None and current.site_id != gateway.site_id:
        raise Conflict(f"order {order.id} belongs to another site")
    if current is not None and current.version >= order.version:
        return
    values = _order_values(conn, gateway, order)
    if current is None:
        await conn.execute(t.orders.insert().values(**values))
    else:
        del values["id"]
        await conn.execute(t.orders.update().where(t.orders.c.id == order.id).values(**values))
        await conn.execute(t.order_items.delete().where(t.order_items.c.order_id == order.id))
    if order.items:
        await conn.execute(
            t.order_items.insert(),
            [
                {
                    "id": item.id,
                    "order_id": order.id,
                    "catalog_item_id": item.catalog_item_id,
                    "slot": item.slot,
                    "name": item.name,
                    "unit_price": item.unit_price,
                    "quantity": item.quantity,
                    "dispensed": item.dispensed,
                    "failed": item.failed,
                    "unknown": item.unknown,
                    "dispense_status": item.dispense_status.value,
                }
                for item in order.items
            ],
        )
    if order.status in TERMINAL_ORDER_STATUSES:
        await _orders_ended(conn, gateway, [order.id], effects)


async def _check_order(conn: AsyncConnection, gateway: Gateway, order_id: str | None) -> None:
    """A record may name an order only if that order (when the cloud knows it) is on a machine
    of this gateway's site; orders earlier in the same batch are already visible here."""
    if order_id is None:
        return
    machine_id = await conn.scalar(
        sa.select(t.orders.c.machine_id).where(t.orders.c.id == order_id)
    )
    if machine_id is None:
        return
    site_id = await conn.scalar(
        sa.select(t.machines.c.site_id).where(t.machines.c.id == machine_id)
    )
    if site_id != gateway.site_id:
        raise Conflict(
            f"order {order_id} belongs to a machine of another site",
            details={"order_id": order_id},
        )


async def _existing(
    conn: AsyncConnection, table: sa.Table, key: str, values: dict[str, Any]
) -> Any:
    """The stored row with this id, refusing an id that another machine already used: answering
    it as a duplicate would silently drop this machine's record."""
    row = (await conn.execute(sa.select(table).where(table.c[key] == values[key]))).first()
    if row is not None and row.machine_id != values["machine_id"]:
        raise EventIdConflict(
            f"{key} {values[key]} is already stored for another machine",
            details={key: values[key]},
        )
    return row


async def _apply_dispense(conn: AsyncConnection, gateway: Gateway, record: DispenseRecord) -> None:
    await _check_order(conn, gateway, record.order_id)
    values = record.model_dump() | {"tenant_id": gateway.tenant_id, "received_at": utcnow()}
    row = await _existing(conn, t.dispense_records, "cmd_id", values)
    if row is None:
        await conn.execute(t.dispense_records.insert().values(**values))
    elif row.result == "unknown" and row.reason == _NO_RESULT:
        # The gateway's late correction of a dispense it first recorded as timed out; no other
        # outcome is ever rewritten.
        await conn.execute(
            t.dispense_records.update()
            .where(
                t.dispense_records.c.cmd_id == record.cmd_id,
                t.dispense_records.c.result == "unknown",
                t.dispense_records.c.reason == _NO_RESULT,
            )
            .values(
                result=record.result,
                reason=record.reason,
                device_ts=record.device_ts,
                received_at=values["received_at"],
            )
        )


async def _apply_credit(conn: AsyncConnection, gateway: Gateway, credit: CashCreditRecord) -> None:
    await _check_order(conn, gateway, credit.order_id)
    values = credit.model_dump() | {"tenant_id": gateway.tenant_id, "received_at": utcnow()}
    if await _existing(conn, t.cash_credits, "credit_id", values) is None:
        await conn.execute(t.cash_credits.insert().values(**values))


async def _apply_refund_request(
    conn: AsyncConnection, gateway: Gateway, request: RefundRequest, effects: _Effects
) -> None:
    """The gateway decided money goes back: one refund per id (the cloud may have decided the
    same unserved refund first), for a payment of this machine and order, never beyond it."""
    await _check_order(conn, gateway, request.order_id)
    existing = (
        await conn.execute(
            sa.select(t.refunds.c.tenant_id, t.refunds.c.machine_id).where(
                t.refunds.c.id == request.refund_id
            )
        )
    ).first()
    if existing is not None:
        if existing.tenant_id != gateway.tenant_id or existing.machine_id not in (
            None,
            request.machine_id,
        ):
            raise EventIdConflict(
                f"refund_id {request.refund_id} is already stored for another machine",
                details={"refund_id": request.refund_id},
            )
        return
    payment = (
        await conn.execute(
            sa.select(t.payments).where(
                t.payments.c.id == request.payment_id,
                t.payments.c.tenant_id == gateway.tenant_id,
            )
        )
    ).first()
    if payment is None:
        raise _EventUnapplicable(
            Refusal(
                "unknown_payment",
                f"refund {request.refund_id}: the cloud has no payment {request.payment_id}; "
                "nothing was refunded",
            )
        )
    if (payment.machine_id, payment.order_id, payment.currency) != (
        request.machine_id,
        request.order_id,
        request.currency,
    ):
        raise _EventUnapplicable(
            Refusal(
                "payment_mismatch",
                f"refund {request.refund_id}: payment {payment.id} is for another machine, order "
                "or currency; nothing was refunded",
            )
        )
    already = await conn.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(t.refunds.c.amount), 0)).where(
            t.refunds.c.payment_id == payment.id,
            t.refunds.c.reason.in_(_OWN_REFUNDS),
            t.refunds.c.status != "voided",
        )
    )
    if int(already or 0) + request.amount > payment.amount:
        raise _EventUnapplicable(
            Refusal(
                "refund_exceeds_payment",
                f"refund {request.refund_id} of {request.amount} paise would bring payment "
                f"{payment.id}'s refunds to more than its {payment.amount} paise; nothing was "
                "refunded",
            )
        )
    _, woken = await record_refund(
        conn,
        NewRefund(
            id=request.refund_id,
            tenant_id=gateway.tenant_id,
            site_id=gateway.site_id,
            machine_id=request.machine_id,
            order_id=request.order_id,
            payment_id=payment.id,
            provider=payment.provider,
            provider_payment_id=payment.provider_payment_id,
            amount=request.amount,
            currency=request.currency,
            reason=request.reason,
            source=SOURCE_GATEWAY,
            hold=request.hold,
        ),
    )
    effects.gateways.update(woken)
    effects.workers = effects.workers or not request.hold


async def _apply_credit_entry(
    conn: AsyncConnection, gateway: Gateway, entry: CreditEntry, parsed: _Parsed
) -> None:
    await _check_order(conn, gateway, entry.order_id)
    values = entry.model_dump() | {
        "tenant_id": gateway.tenant_id,
        "reason": entry.reason.value,
        "occurred_at": parsed.event.occurred_at,
        "received_at": utcnow(),
    }
    if await _existing(conn, t.credit_entries, "entry_id", values) is None:
        await conn.execute(t.credit_entries.insert().values(**values))


async def _apply_slot_state(
    conn: AsyncConnection, gateway: Gateway, record: SlotStateRecord, parsed: _Parsed
) -> None:
    """The slot as the gateway now runs it. ``enable_rev`` does not move: that is the operator's
    switch, and moving it here would make the gateway adopt its own report back."""
    item = t.catalog_items
    row = (
        await conn.execute(
            sa.select(item.c.enable_rev).where(
                item.c.id == record.catalog_item_id, item.c.machine_id == record.machine_id
            )
        )
    ).first()
    if row is None:
        log.info("slot.state for catalog item %s the cloud no longer has", record.catalog_item_id)
        return
    if 0 < record.enable_rev < row.enable_rev:
        # An answer to an operator switch the operator has since changed again.
        return
    await conn.execute(
        item.update()
        .where(item.c.id == record.catalog_item_id, item.c.machine_id == record.machine_id)
        .values(
            enabled=record.enabled,
            disabled_reason=None if record.enabled else record.reason,
            disabled_at=None if record.enabled else parsed.event.occurred_at,
            consecutive_failures=record.consecutive_failures,
        )
    )


async def _apply(
    conn: AsyncConnection, gateway: Gateway, parsed: _Parsed, effects: _Effects
) -> None:
    payload = parsed.payload
    now = utcnow()
    if isinstance(payload, OrderSnapshot):
        await _apply_order(conn, gateway, payload, effects)
    elif isinstance(payload, RefundRequest):
        await _apply_refund_request(conn, gateway, payload, effects)
    elif isinstance(payload, CreditEntry):
        await _apply_credit_entry(conn, gateway, payload, parsed)
    elif isinstance(payload, SlotStateRecord):
        await _apply_slot_state(conn, gateway, payload, parsed)
    elif isinstance(payload, DispenseRecord):
        await _apply_dispense(conn, gateway, payload)
    elif isinstance(payload, CashCreditRecord):
        await _apply_credit(conn, gateway, payload)
    elif isinstance(payload, InventoryChange):
        # The gateway's count; neither stock_rev nor the machine version moves, so this does not
        # echo back to the gateway as a restock.
        await conn.execute(
            t.catalog_items.update()
            .where(
                t.catalog_items.c.id == payload.catalog_item_id,
                t.catalog_items.c.machine_id == payload.machine_id,
            )
            .values(quantity=payload.quantity, updated_at=now)
        )


def _is_data_error(exc: sa.exc.DBAPIError) -> bool:
    """A value the database cannot store (SQLSTATE class 22: too long, out of range, bad
    encoding). asyncpg errors do not always arrive as ``DataError``, so the code decides."""
    sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return isinstance(exc, sa.exc.DataError) or str(sqlstate or "").startswith("22")


class _ApplyFailed(Exception):
    """An event failed to apply in a batch run without savepoints: run the batch again with one
    savepoint per event, so that event alone is rejected."""


async def _apply_one(
    conn: AsyncConnection,
    gateway: Gateway,
    parsed: _Parsed,
    effects: _Effects,
    *,
    isolate: bool = True,
) -> Refusal | None:
    """Apply one valid event. With ``isolate`` it runs in a savepoint, so its failure undoes
    only itself and is returned as a refusal; without, a failure raises ``_ApplyFailed`` (the
    common batch, where nothing fails, pays no savepoint round trips). Identity conflicts and
    integrity races always end the whole transaction (409 / a retry)."""
    try:
        if isolate:
            async with conn.begin_nested():
                await _apply(conn, gateway, parsed, effects)
        else:
            await _apply(conn, gateway, parsed, effects)
    except Conflict:
        raise
    except _EventUnapplicable as exc:
        if not isolate:
            raise _ApplyFailed from exc
        log.warning("event %s not applied: %s", parsed.event.event_id, exc.refusal.message)
        return exc.refusal
    except sa.exc.DBAPIError as exc:
        if not _is_data_error(exc):
            # Integrity races, locks, a lost connection: not this event's fault.
            raise
        if not isolate:
            raise _ApplyFailed from exc
        log.warning("event %s not storable: %s", parsed.event.event_id, exc.orig)
        return Refusal("not_storable", "the database refused a value of this event")
    except Exception as exc:
        if not isolate:
            raise _ApplyFailed from exc
        # A bug in applying one kind of event must not stall the site's whole sync: keep the
        # event aside; once the cloud is fixed an operator retries it.
        log.exception("event %s could not be applied", parsed.event.event_id)
        return Refusal("apply_failed", "the cloud could not apply this event")
    return None


async def _insert_event(conn: AsyncConnection, gateway_id: str, event: OutboxEvent) -> None:
    await conn.execute(
        t.sync_events.insert().values(
            event_id=event.event_id,
            gateway_id=gateway_id,
            seq=event.seq,
            type=event.type,
            occurred_at=event.occurred_at,
            payload=sealed.seal_event_payload(conn, event.event_id, event.payload),
            received_at=utcnow(),
        )
    )


# --- the bulk path ---------------------------------------------------------------------------
#
# A drain after an outage sends full batches of the common events; applying them one by one
# costs 5-7 statements each (a round trip apiece). The bulk path applies a whole batch in a few
# set-based statements with the same outcome as applying its events one by one in order:
# existing rows are read once per table, decided in memory in batch order, and written with one
# executemany per table. Batches holding an event whose checks depend on other money rows
# (refund.request: the refunds already recorded for a payment) or that is rare (slot.state)
# take the per-event path, as does a batch in which the bulk path fails (so the one bad event
# alone is dead-lettered).

_BULK_TYPES = frozenset(
    {"order.snapshot", "dispense.result", "cash.credit", "inventory.changed", "credit.entry"}
)


def _bulkable(items: list[_Parsed | _Refused]) -> bool:
    return all(isinstance(item, _Refused) or item.event.type in _BULK_TYPES for item in items)


@dataclass
class _Found:
    """What the bulk path needs to know of stored rows, read with one query (``_lookup``)."""

    events: dict[str, str] = field(default_factory=dict)  # event_id -> gateway_id
    machines: set[str] = field(default_factory=set)  # of this gateway's site
    orders: dict[str, Any] = field(default_factory=dict)  # id -> (version, site_id, machine_site)
    dispense: dict[str, Any] = field(default_factory=dict)  # cmd_id -> (machine_id, result, ...)
    credits: dict[str, Any] = field(default_factory=dict)  # credit_id -> (machine_id)
    entries: dict[str, Any] = field(default_factory=dict)  # entry_id -> (machine_id)
    ack_seq: int | None = None


@dataclass(frozen=True)
class _Row:
    machine_id: str | None = None
    result: str | None = None
    reason: str | None = None
    version: int | None = None
    site_id: str | None = None
    machine_site: str | None = None


def _part(kind: str, key: Any, *cols: Any, n: Any = None) -> list[Any]:
    text = [sa.cast(c, sa.String) if c is not None else sa.cast(sa.null(), sa.String) for c in cols]
    text += [sa.cast(sa.null(), sa.String)] * (3 - len(text))
    number = sa.cast(n if n is not None else sa.null(), sa.BigInteger)
    return [
        sa.literal(kind, sa.String).label("kind"),
        sa.cast(key, sa.String).label("k"),
        text[0].label("a"),
        text[1].label("b"),
        text[2].label("c"),
        number.label("n"),
    ]


async def _lookup(
    conn: AsyncConnection, gateway: Gateway, items: list[_Parsed | _Refused]
) -> _Found:
    """Every stored row the batch's events name, in one round trip (a UNION ALL of one select
    per table): event ids, machines, orders, dispense commands, cash credits, credit entries,
    and the gateway's high-water mark."""
    parsed = [item for item in items if isinstance(item, _Parsed)]
    ids = {_event_id(item) for item in items}
    machines = {p.payload.machine_id for p in parsed}
    orders: set[str] = set()
    keys: dict[str, set[str]] = {
        "dispense.result": set(),
        "cash.credit": set(),
        "credit.entry": set(),
    }
    for p in parsed:
        payload = p.payload
        if isinstance(payload, OrderSnapshot):
            orders.add(payload.id)
        elif getattr(payload, "order_id", None) is not None:
            orders.add(payload.order_id)
        if isinstance(payload, DispenseRecord):
            keys["dispense.result"].add(payload.cmd_id)
        elif isinstance(payload, CashCreditRecord):
            keys["cash.credit"].add(payload.credit_id)
        elif isinstance(payload, CreditEntry):
            keys["credit.entry"].add(payload.entry_id)
    ev, m, o, d = t.sync_events, t.machines, t.orders, t.dispense_records
    parts = [
        sa.select(*_part("e", ev.c.event_id, ev.c.gateway_id)).where(ev.c.event_id.in_(ids)),
        sa.select(
            *_part("s", t.gateway_sync_state.c.gateway_id, n=t.gateway_sync_state.c.ack_seq)
        ).where(t.gateway_sync_state.c.gateway_id == gateway.id),
    ]
    if machines:
        parts.append(
            sa.select(*_part("m", m.c.id)).where(
                m.c.id.in_(machines), m.c.site_id == gateway.site_id
            )
        )
    if orders:
        parts.append(
            sa.select(*_part("o", o.c.id, o.c.site_id, m.c.site_id, n=o.c.version))
            .select_from(o.outerjoin(m, m.c.id == o.c.machine_id))
            .where(o.c.id.in_(orders))
        )
    if keys["dispense.result"]:
        parts.append(
            sa.select(*_part("d", d.c.cmd_id, d.c.machine_id, d.c.result, d.c.reason)).where(
                d.c.cmd_id.in_(keys["dispense.result"])
            )
        )
    for kind, table, key, wanted in (
        ("c", t.cash_credits, "credit_id", keys["cash.credit"]),
        ("n", t.credit_entries, "entry_id", keys["credit.entry"]),
    ):
        if wanted:
            parts.append(
                sa.select(*_part(kind, table.c[key], table.c.machine_id)).where(
                    table.c[key].in_(wanted)
                )
            )
    found = _Found()
    for row in await conn.execute(sa.union_all(*parts)):
        kind = row.kind
        if kind == "e":
            found.events[row.k] = row.a
        elif kind == "s":
            found.ack_seq = int(row.n)
        elif kind == "m":
            found.machines.add(row.k)
        elif kind == "o":
            found.orders[row.k] = _Row(version=int(row.n), site_id=row.a, machine_site=row.b)
        elif kind == "d":
            found.dispense[row.k] = _Row(machine_id=row.a, result=row.b, reason=row.c)
        elif kind == "c":
            found.credits[row.k] = _Row(machine_id=row.a)
        else:
            found.entries[row.k] = _Row(machine_id=row.a)
    foreign_machines = machines - found.machines
    if foreign_machines:
        raise Conflict(
            "events name machines that are not at this gateway's site",
            details={"machine_ids": sorted(foreign_machines)},
        )
    foreign = sorted(event_id for event_id, owner in found.events.items() if owner != gateway.id)
    if foreign:
        raise EventIdConflict(
            "event ids are already stored for another gateway",
            details={"event_ids": foreign},
        )
    return found


def _claim(
    key: str, value: str, machine_id: str, stored: dict[str, Any], fresh: dict[str, Any]
) -> bool:
    """Whether ``value`` is new; refuses (as ``_existing`` does) an id another machine used."""
    row = stored.get(value) or fresh.get(value)
    if row is None:
        return True
    owner = row.machine_id if not isinstance(row, dict) else row["machine_id"]
    if owner != machine_id:
        raise EventIdConflict(
            f"{key} {value} is already stored for another machine", details={key: value}
        )
    return False


def _order_values(conn: AsyncConnection, gateway: Gateway, order: OrderSnapshot) -> dict[str, Any]:
    return {
        "id": order.id,
        "tenant_id": gateway.tenant_id,
        "site_id": gateway.site_id,
        "machine_id": order.machine_id,
        "gateway_id": gateway.id,
        "status": order.status.value,
        "payment_method": order.payment_method.value,
        "total_amount": order.total_amount,
        "paid_amount": order.paid_amount,
        "currency": order.currency,
        "payment_id": order.payment_id,
        "refund_amount": order.refund_amount,
        "credit_amount": order.credit_amount,
        "customer_name": order.customer_name,
        "customer_phone": sealed.seal_phone(conn, order.id, order.customer_phone),
        "version": order.version,
        "created_at": order.created_at,
        "updated_at": order.updated_at,
        "synced_at": utcnow(),
    }


def _check_orders_bulk(gateway: Gateway, events: list[_Parsed], stored: dict[str, Any]) -> None:
    """``_check_order`` and the order snapshots' site check for the whole batch."""
    for p in events:  # the first offender in batch order, as the per-event path finds it
        payload = p.payload
        if isinstance(payload, OrderSnapshot):
            row = stored.get(payload.id)
            if row is not None and row.site_id != gateway.site_id:
                raise Conflict(f"order {payload.id} belongs to another site")
        elif getattr(payload, "order_id", None) is not None:
            row = stored.get(payload.order_id)
            if row is not None and row.machine_site != gateway.site_id:
                raise Conflict(
                    f"order {payload.order_id} belongs to a machine of another site",
                    details={"order_id": payload.order_id},
                )


async def _apply_orders_bulk(
    conn: AsyncConnection,
    gateway: Gateway,
    snapshots: list[OrderSnapshot],
    stored: dict[str, Any],
    effects: _Effects,
) -> None:
    version = {order_id: row.version for order_id, row in stored.items()}
    final: dict[str, OrderSnapshot] = {}
    ended: set[str] = set()
    for order in snapshots:
        current = version.get(order.id)
        if current is not None and current >= order.version:
            continue
        version[order.id] = order.version
        final[order.id] = order
        if order.status in TERMINAL_ORDER_STATUSES:
            ended.add(order.id)
    if not final:
        return
    ordered = sorted(final.items())  # key order: concurrent pushes lock rows in one order
    inserts = [_order_values(conn, gateway, o) for i, o in ordered if i not in stored]
    updates = [_order_values(conn, gateway, o) for i, o in ordered if i in stored]
    if inserts:
        await conn.execute(t.orders.insert(), inserts)
    if updates:
        columns = [c for c in updates[0] if c != "id"]
        await conn.execute(
            t.orders.update()
            .where(t.orders.c.id == sa.bindparam("b_id"))
            .values({c: sa.bindparam(f"b_{c}") for c in columns}),
            [{f"b_{k}": v for k, v in row.items()} for row in updates],
        )
        await conn.execute(
            t.order_items.delete().where(t.order_items.c.order_id.in_([r["id"] for r in updates]))
        )
    items = [
        {
            "id": item.id,
            "order_id": order.id,
            "catalog_item_id": item.catalog_item_id,
            "slot": item.slot,
            "name": item.name,
            "unit_price": item.unit_price,
            "quantity": item.quantity,
            "dispensed": item.dispensed,
            "failed": item.failed,
            "unknown": item.unknown,
            "dispense_status": item.dispense_status.value,
        }
        for _, order in ordered
        for item in order.items
    ]
    if items:
        await conn.execute(t.order_items.insert(), items)
    if ended:
        await _orders_ended(conn, gateway, sorted(ended), effects)


async def _orders_ended(
    conn: AsyncConnection, gateway: Gateway, order_ids: list[str], effects: _Effects
) -> None:
    """The orders are over: a QR code still payable for one is to be closed (the closer worker
    does it), and money already captured for one that the order did not use goes back. One
    query finds their payments (cash orders have none); on PostgreSQL they are locked like a
    capture locks them, in id order, so whichever of the two commits second sees the other."""
    query = sa.select(t.payments).where(
        t.payments.c.order_id.in_(order_ids), t.payments.c.tenant_id == gateway.tenant_id
    )
    if conn.dialect.name == "postgresql":
        query = query.order_by(t.payments.c.id).with_for_update()
    for payment in (await conn.execute(query)).all():
        if payment.status == "created" and payment.close_state is None:
            await conn.execute(
                t.payments.update()
                .where(t.payments.c.id == payment.id, t.payments.c.close_state.is_(None))
                .values(close_state="pending", updated_at=utcnow())
            )
            effects.workers = True
        elif payment.status == "captured":
            refund_id, woken = await refund_unserved(conn, payment)
            if refund_id is not None:
                effects.gateways.update(woken)
                effects.workers = True


async def _apply_dispense_bulk(
    conn: AsyncConnection, gateway: Gateway, records: list[DispenseRecord], stored: dict[str, Any]
) -> None:
    table = t.dispense_records
    fresh: dict[str, dict[str, Any]] = {}
    corrections: dict[str, dict[str, Any]] = {}
    now = utcnow()
    for record in records:
        values = record.model_dump() | {"tenant_id": gateway.tenant_id, "received_at": now}
        if _claim("cmd_id", record.cmd_id, record.machine_id, stored, fresh):
            fresh[record.cmd_id] = values
            continue
        # The late correction of a dispense first recorded as timed out; nothing else moves.
        row = fresh.get(record.cmd_id) or corrections.get(record.cmd_id)
        if row is None:
            old = stored[record.cmd_id]
            row = {"result": old.result, "reason": old.reason}
        if row["result"] != "unknown" or row["reason"] != _NO_RESULT:
            continue
        change = {
            "result": record.result,
            "reason": record.reason,
            "device_ts": record.device_ts,
            "received_at": now,
        }
        if record.cmd_id in fresh:
            fresh[record.cmd_id].update(change)
        else:
            corrections[record.cmd_id] = change
    if fresh:
        await conn.execute(table.insert(), [fresh[k] for k in sorted(fresh)])
    if corrections:
        await conn.execute(
            table.update()
            .where(
                table.c.cmd_id == sa.bindparam("b_cmd_id"),
                table.c.result == "unknown",
                table.c.reason == _NO_RESULT,
            )
            .values({c: sa.bindparam(f"b_{c}") for c in ("result", "reason", "device_ts")})
            .values(received_at=sa.bindparam("b_received_at")),
            [
                {"b_cmd_id": k} | {f"b_{c}": v for c, v in corrections[k].items()}
                for k in sorted(corrections)
            ],
        )


async def _insert_once_bulk(
    conn: AsyncConnection,
    table: sa.Table,
    key: str,
    rows: list[dict[str, Any]],
    stored: dict[str, Any],
) -> None:
    """Rows keyed by ``key`` inserted once (``_existing`` for many)."""
    fresh: dict[str, dict[str, Any]] = {}
    for row in rows:
        if _claim(key, row[key], row["machine_id"], stored, fresh):
            fresh[row[key]] = row
    if fresh:
        await conn.execute(table.insert(), [fresh[k] for k in sorted(fresh)])


async def _apply_inventory_bulk(conn: AsyncConnection, changes: list[InventoryChange]) -> None:
    last = {(c.catalog_item_id, c.machine_id): c.quantity for c in changes}  # the last count wins
    item = t.catalog_items
    await conn.execute(
        item.update()
        .where(item.c.id == sa.bindparam("b_id"), item.c.machine_id == sa.bindparam("b_machine"))
        .values(quantity=sa.bindparam("b_quantity"), updated_at=sa.bindparam("b_now")),
        [
            {"b_id": i, "b_machine": m, "b_quantity": q, "b_now": utcnow()}
            for (i, m), q in sorted(last.items())
        ],
    )


async def _apply_bulk(
    conn: AsyncConnection,
    gateway: Gateway,
    events: list[_Parsed],
    found: _Found,
    effects: _Effects,
) -> None:
    """Apply new, valid events of ``_BULK_TYPES`` as applying them one by one in order would."""
    stored_orders = found.orders
    _check_orders_bulk(gateway, events, stored_orders)
    by_type: dict[str, list[_Parsed]] = {}
    for p in events:
        by_type.setdefault(p.event.type, []).append(p)
    snapshots = [p.payload for p in by_type.get("order.snapshot", [])]
    if snapshots:
        await _apply_orders_bulk(conn, gateway, snapshots, stored_orders, effects)
    if "dispense.result" in by_type:
        records = [p.payload for p in by_type["dispense.result"]]
        await _apply_dispense_bulk(conn, gateway, records, found.dispense)
    now = utcnow()
    if "cash.credit" in by_type:
        rows = [
            p.payload.model_dump() | {"tenant_id": gateway.tenant_id, "received_at": now}
            for p in by_type["cash.credit"]
        ]
        await _insert_once_bulk(conn, t.cash_credits, "credit_id", rows, found.credits)
    if "credit.entry" in by_type:
        rows = [
            p.payload.model_dump()
            | {
                "tenant_id": gateway.tenant_id,
                "reason": p.payload.reason.value,
                "occurred_at": p.event.occurred_at,
                "received_at": now,
            }
            for p in by_type["credit.entry"]
        ]
        await _insert_once_bulk(conn, t.credit_entries, "entry_id", rows, found.entries)
    if "inventory.changed" in by_type:
        await _apply_inventory_bulk(conn, [p.payload for p in by_type["inventory.changed"]])


def _event_row(conn: AsyncConnection, gateway_id: str, event: OutboxEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "gateway_id": gateway_id,
        "seq": event.seq,
        "type": event.type,
        "occurred_at": event.occurred_at,
        "payload": sealed.seal_event_payload(conn, event.event_id, event.payload),
        "received_at": utcnow(),
    }


async def _store(
    conn: AsyncConnection,
    gateway: Gateway,
    items: list[_Parsed | _Refused],
    effects: _Effects,
    *,
    mode: str,
) -> PushAck:
    if mode == _BULK:
        return await _store_bulk(conn, gateway, items, await _lookup(conn, gateway, items), effects)
    known = await _known(conn, gateway, items)
    isolate = mode == _ISOLATED
    accepted = duplicates = 0
    rejected: list[RejectedEvent] = []
    stored: list[str] = []
    seen: set[str] = set()
    for item in items:
        event_id = _event_id(item)
        if event_id in known or event_id in seen:
            duplicates += 1
            continue
        seen.add(event_id)
        if isinstance(item, _Parsed):
            refused = await _apply_one(conn, gateway, item, effects, isolate=isolate)
            if refused is None:
                await _insert_event(conn, gateway.id, item.event)
                stored.append(event_id)
                accepted += 1
                continue
            item = _Refused(item.event.seq, event_id, item.raw, refused)
        await _dead_letter(conn, gateway, item, rejected)
    return await _finish(conn, gateway, items, stored, accepted, duplicates, rejected)


async def _known(
    conn: AsyncConnection, gateway: Gateway, items: list[_Parsed | _Refused]
) -> dict[str, str]:
    """The batch's machines checked, and its event ids already stored (one query): the event id
    is the exactly-once guard."""
    parsed_events = [item for item in items if isinstance(item, _Parsed)]
    await _check_machines(conn, gateway, parsed_events)
    ids = [_event_id(item) for item in items]
    known = {
        row.event_id: row.gateway_id
        for row in await conn.execute(
            sa.select(t.sync_events.c.event_id, t.sync_events.c.gateway_id).where(
                t.sync_events.c.event_id.in_(ids)
            )
        )
    }
    foreign = sorted(event_id for event_id, owner in known.items() if owner != gateway.id)
    if foreign:
        # Counting these as replays would silently drop this gateway's events.
        raise EventIdConflict(
            "event ids are already stored for another gateway",
            details={"event_ids": foreign},
        )
    return known


async def _dead_letter(
    conn: AsyncConnection, gateway: Gateway, item: _Refused, rejected: list[RejectedEvent]
) -> None:
    await dead_letters.record(conn, gateway, item.seq, item.event_id, item.raw, item.refusal)
    rejected.append(
        RejectedEvent(
            event_id=item.event_id,
            seq=item.seq,
            code=item.refusal.code,
            message=item.refusal.message,
        )
    )


async def _finish(
    conn: AsyncConnection,
    gateway: Gateway,
    items: list[_Parsed | _Refused],
    stored: list[str],
    accepted: int,
    duplicates: int,
    rejected: list[RejectedEvent],
    *,
    previous: Any = _UNREAD,
) -> PushAck:
    await dead_letters.resolve(conn, gateway.id, stored)
    high = max(item.event.seq if isinstance(item, _Parsed) else item.seq for item in items)
    ack_seq = await _advance(conn, gateway.id, high, previous)
    return PushAck(ack_seq=ack_seq, accepted=accepted, duplicates=duplicates, rejected=rejected)


async def _store_bulk(
    conn: AsyncConnection,
    gateway: Gateway,
    items: list[_Parsed | _Refused],
    found: _Found,
    effects: _Effects,
) -> PushAck:
    """``_store`` with the new events applied together (``_apply_bulk``) and their
    ``sync_events`` rows inserted with one executemany. A failure to apply raises
    ``_ApplyFailed``: the batch runs again event by event, each in a savepoint."""
    accepted = duplicates = 0
    rejected: list[RejectedEvent] = []
    fresh: list[_Parsed] = []
    seen: set[str] = set()
    for item in items:
        event_id = _event_id(item)
        if event_id in found.events or event_id in seen:
            duplicates += 1
            continue
        seen.add(event_id)
        if isinstance(item, _Parsed):
            fresh.append(item)
        else:
            await _dead_letter(conn, gateway, item, rejected)
    try:
        await _apply_bulk(conn, gateway, fresh, found, effects)
    except Conflict:
        raise
    except sa.exc.DBAPIError as exc:
        if not _is_data_error(exc):
            raise  # integrity races, locks, a lost connection: the batch is retried whole
        raise _ApplyFailed from exc
    except Exception as exc:
        raise _ApplyFailed from exc
    if fresh:
        # Key order, as every table of the bulk path: concurrent pushes lock rows in one order.
        rows = sorted(
            (_event_row(conn, gateway.id, p.event) for p in fresh), key=lambda r: r["event_id"]
        )
        await conn.execute(t.sync_events.insert(), rows)
        accepted = len(fresh)
    stored = [p.event.event_id for p in fresh]
    return await _finish(
        conn, gateway, items, stored, accepted, duplicates, rejected, previous=found.ack_seq
    )


def _event_id(item: _Parsed | _Refused) -> str:
    return item.event.event_id if isinstance(item, _Parsed) else item.event_id


async def _advance(
    conn: AsyncConnection, gateway_id: str, high: int, previous: Any = _UNREAD
) -> int:
    """Move the gateway's high-water mark to ``high``; ``previous``: the mark as read earlier in
    this transaction (``_lookup``), else it is read here."""
    now = utcnow()
    if previous is _UNREAD:
        previous = await conn.scalar(
            sa.select(t.gateway_sync_state.c.ack_seq).where(
                t.gateway_sync_state.c.gateway_id == gateway_id
            )
        )
    ack_seq = max(high, previous or 0)
    if previous is None:
        await conn.execute(
            t.gateway_sync_state.insert().values(
                gateway_id=gateway_id, ack_seq=ack_seq, updated_at=now
            )
        )
    elif ack_seq != previous:
        # Never down: a concurrent push (PostgreSQL, read committed) may have moved the mark
        # past what this transaction read.
        await conn.execute(
            t.gateway_sync_state.update()
            .where(
                t.gateway_sync_state.c.gateway_id == gateway_id,
                t.gateway_sync_state.c.ack_seq < ack_seq,
            )
            .values(ack_seq=ack_seq, updated_at=now)
        )
    return ack_seq


async def store_batch(
    engine: AsyncEngine,
    gateway: Gateway,
    body: Any,
    hub: ChannelHub | None = None,
    *,
    bulk: bool = True,
) -> PushAck:
    """Store a pushed batch (the JSON body as parsed): 400 for a malformed envelope, 409 for an
    identity conflict, otherwise each event stored, deduplicated or dead-lettered. With ``hub``,
    channel senders and workers with new work (refunds) are woken once it is committed; without,
    their database polls find it."""
    items = _parse(read_envelope(body), body)
    mode = _BULK if bulk and _bulkable(items) else _PLAIN
    races = 0
    while True:
        effects = _Effects()
        try:
            async with engine.begin() as conn:
                ack = await _store(conn, gateway, items, effects, mode=mode)
            if hub is not None:
                hub.wake(effects.gateways)
                if effects.workers:
                    hub.wake_workers()
            return ack
        except _ApplyFailed:
            if mode == _ISOLATED:
                raise AssertionError("an isolated run never raises _ApplyFailed") from None
            mode = _ISOLATED
        except sa.exc.IntegrityError as exc:
            # A concurrent push of the same events won the race; the retry sees them as known.
            races += 1
            if races == _RETRIES:
                raise Conflict("concurrent push of the same events; retry") from exc


async def retry_dead_letter(engine: AsyncEngine, tenant_id: str, letter_id: str) -> Any:
    """Apply a dead letter's stored event again (after its cause was fixed in the cloud).

    Exactly once: an event the gateway meanwhile delivered is only marked resolved. A refusal
    counts as one more attempt and raises ``DeadLetterStillFailing``; the letter stays open."""
    for attempt in range(_RETRIES):
        try:
            return await _retry_once(engine, tenant_id, letter_id)
        except sa.exc.IntegrityError as exc:
            # A concurrent retry of the letter or the gateway's own resend stored the event first
            # (the unique event id is the exactly-once guard; PostgreSQL answered this with 500).
            # No row lock on the letter up front: a push resolves letters after applying, so
            # locking the letter first would deadlock against it. The next try sees it stored.
            if attempt == _RETRIES - 1:
                raise Conflict("the event is being stored concurrently; retry") from exc
    raise AssertionError("unreachable")


async def _retry_once(engine: AsyncEngine, tenant_id: str, letter_id: str) -> Any:
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                sa.select(t.sync_dead_letters).where(
                    t.sync_dead_letters.c.id == letter_id,
                    t.sync_dead_letters.c.tenant_id == tenant_id,
                )
            )
        ).first()
        if row is None:
            raise NotFound("no such dead letter")
        if row.state != dead_letters.OPEN:
            raise DeadLetterNotRetryable("the dead letter is resolved already")
        if row.payload_truncated:
            raise DeadLetterNotRetryable(
                "the stored event was clipped; retry it from the gateway, which holds all of it"
            )
        if not await gateway_active(conn, row.gateway_id):
            # Revoking is what an operator does to a stolen or compromised gateway: what it sent
            # and the cloud refused must not be applied as money and stock afterwards.
            raise DeadLetterNotRetryable("the gateway that sent this event has been revoked")
        gateway = Gateway(id=row.gateway_id, tenant_id=row.tenant_id, site_id=row.site_id)
        owner = await conn.scalar(
            sa.select(t.sync_events.c.gateway_id).where(t.sync_events.c.event_id == row.event_id)
        )
        refusal: Refusal | None = None
        if owner is None:
            payload = dead_letters.opened_text(conn, gateway.id, row.event_id, row.payload)
            refusal = await _retry_apply(conn, gateway, payload)
        elif owner != gateway.id:
            refusal = Refusal("event_id_conflict", "the event id is stored for another gateway")
        if refusal is None:
            await dead_letters.resolve(conn, gateway.id, [row.event_id])
        else:
            await conn.execute(
                t.sync_dead_letters.update()
                .where(t.sync_dead_letters.c.id == row.id)
                .values(
                    attempts=t.sync_dead_letters.c.attempts + 1,
                    error_code=refusal.code,
                    error_message=refusal.message[: dead_letters.MAX_MESSAGE],
                    last_seen_at=utcnow(),
                )
            )
        result = (
            await conn.execute(
                sa.select(t.sync_dead_letters).where(t.sync_dead_letters.c.id == row.id)
            )
        ).one()
    if refusal is not None:
        raise DeadLetterStillFailing(
            f"still refused: {refusal.message}",
            details={"code": refusal.code, "message": refusal.message},
        )
    return result


async def _retry_apply(conn: AsyncConnection, gateway: Gateway, payload: str) -> Refusal | None:
    try:
        parsed = parse_event(json.loads(payload))
    except _EventRefused as exc:
        return exc.refusal
    except ValueError:
        return Refusal("validation_error", "the stored event is not valid JSON")
    try:
        # In a savepoint: a conflict refuses this retry, and the letter still records it.
        async with conn.begin_nested():
            await _check_machines(conn, gateway, [parsed])
            refused = await _apply_one(conn, gateway, parsed, _Effects())
    except Conflict as exc:
        return Refusal(exc.code, exc.message)
    if refused is None:
        await _insert_event(conn, gateway.id, parsed.event)
    return refused
