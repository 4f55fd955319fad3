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
    values = {
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
    if current is None:
        await conn.execute(t.orders.insert().values(id=order.id, **values))
    else:
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
        await _order_ended(conn, gateway, order, effects)


async def _order_ended(
    conn: AsyncConnection, gateway: Gateway, order: OrderSnapshot, effects: _Effects
) -> None:
    """The order is over: a QR code still payable for it is to be closed (the closer worker does
    it), and money already captured for it that the order did not use goes back."""
    query = sa.select(t.payments).where(
        t.payments.c.order_id == order.id, t.payments.c.tenant_id == gateway.tenant_id
    )
    if conn.dialect.name == "postgresql":
        # Locked like a capture locks it: whichever of the two commits second sees the other.
        query = query.with_for_update()
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


async def _store(
    conn: AsyncConnection,
    gateway: Gateway,
    items: list[_Parsed | _Refused],
    effects: _Effects,
    *,
    isolate: bool,
) -> PushAck:
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
        await dead_letters.record(conn, gateway, item.seq, event_id, item.raw, item.refusal)
        rejected.append(
            RejectedEvent(
                event_id=event_id,
                seq=item.seq,
                code=item.refusal.code,
                message=item.refusal.message,
            )
        )
    await dead_letters.resolve(conn, gateway.id, stored)
    high = max(item.event.seq if isinstance(item, _Parsed) else item.seq for item in items)
    ack_seq = await _advance(conn, gateway.id, high)
    return PushAck(ack_seq=ack_seq, accepted=accepted, duplicates=duplicates, rejected=rejected)


def _event_id(item: _Parsed | _Refused) -> str:
    return item.event.event_id if isinstance(item, _Parsed) else item.event_id


async def _advance(conn: AsyncConnection, gateway_id: str, high: int) -> int:
    now = utcnow()
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
        await conn.execute(
            t.gateway_sync_state.update()
            .where(t.gateway_sync_state.c.gateway_id == gateway_id)
            .values(ack_seq=ack_seq, updated_at=now)
        )
    return ack_seq


async def store_batch(
    engine: AsyncEngine, gateway: Gateway, body: Any, hub: ChannelHub | None = None
) -> PushAck:
    """Store a pushed batch (the JSON body as parsed): 400 for a malformed envelope, 409 for an
    identity conflict, otherwise each event stored, deduplicated or dead-lettered. With ``hub``,
    channel senders and workers with new work (refunds) are woken once it is committed; without,
    their database polls find it."""
    items = _parse(read_envelope(body), body)
    isolate = False
    races = 0
    while True:
        effects = _Effects()
        try:
            async with engine.begin() as conn:
                ack = await _store(conn, gateway, items, effects, isolate=isolate)
            if hub is not None:
                hub.wake(effects.gateways)
                if effects.workers:
                    hub.wake_workers()
            return ack
        except _ApplyFailed:
            if isolate:
                raise AssertionError("an isolated run never raises _ApplyFailed") from None
            isolate = True
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
