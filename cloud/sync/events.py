"""Applying a pushed batch of outbox events: stored once by event id, all in one transaction."""

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cloud.db import schema as t
from cloud.db import sealed
from cloud.db.times import utcnow
from cloud.errors import Conflict, EventIdConflict, ValidationFailed
from cloud.sync.identity import Gateway
from contracts.sync import (
    CashCreditRecord,
    DispenseRecord,
    InventoryChange,
    OrderSnapshot,
    OutboxEvent,
    PushAck,
    PushBatch,
)

_PAYLOADS: dict[str, type[BaseModel]] = {
    "order.snapshot": OrderSnapshot,
    "dispense.result": DispenseRecord,
    "cash.credit": CashCreditRecord,
    "inventory.changed": InventoryChange,
}

_RETRIES = 3
# The reason the gateway records when a dispense command got no result in time; only such a
# record may later be corrected (the gateway re-sends it under event id ``{cmd_id}-late``).
_NO_RESULT = "no_result"


@dataclass(frozen=True)
class _Parsed:
    event: OutboxEvent
    payload: Any


def _parse(batch: PushBatch) -> list[_Parsed]:
    parsed = []
    for index, event in enumerate(batch.events):
        try:
            payload = _PAYLOADS[event.type].model_validate(event.payload)
        except ValidationError as exc:
            raise ValidationFailed(
                f"event {event.event_id} has an invalid {event.type} payload",
                details={
                    "index": index,
                    "errors": exc.errors(include_url=False, include_input=False),
                },
            ) from exc
        parsed.append(_Parsed(event, payload))
    return parsed


async def _check_machines(conn: AsyncConnection, gateway: Gateway, events: list[_Parsed]) -> None:
    wanted = {p.payload.machine_id for p in events}
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


async def _apply_order(conn: AsyncConnection, gateway: Gateway, order: OrderSnapshot) -> None:
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


async def _apply(conn: AsyncConnection, gateway: Gateway, parsed: _Parsed) -> None:
    payload = parsed.payload
    now = utcnow()
    if isinstance(payload, OrderSnapshot):
        await _apply_order(conn, gateway, payload)
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


async def _store(conn: AsyncConnection, gateway: Gateway, events: list[_Parsed]) -> PushAck:
    await _check_machines(conn, gateway, events)
    ids = [p.event.event_id for p in events]
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
    seen: set[str] = set()
    now = utcnow()
    for parsed in events:
        event = parsed.event
        if event.event_id in known or event.event_id in seen:
            duplicates += 1
            continue
        seen.add(event.event_id)
        await conn.execute(
            t.sync_events.insert().values(
                event_id=event.event_id,
                gateway_id=gateway.id,
                seq=event.seq,
                type=event.type,
                occurred_at=event.occurred_at,
                payload=sealed.seal_event_payload(conn, event.event_id, event.payload),
                received_at=now,
            )
        )
        await _apply(conn, gateway, parsed)
        accepted += 1
    high = max(p.event.seq for p in events)
    previous = await conn.scalar(
        sa.select(t.gateway_sync_state.c.ack_seq).where(
            t.gateway_sync_state.c.gateway_id == gateway.id
        )
    )
    ack_seq = max(high, previous or 0)
    if previous is None:
        await conn.execute(
            t.gateway_sync_state.insert().values(
                gateway_id=gateway.id, ack_seq=ack_seq, updated_at=now
            )
        )
    else:
        await conn.execute(
            t.gateway_sync_state.update()
            .where(t.gateway_sync_state.c.gateway_id == gateway.id)
            .values(ack_seq=ack_seq, updated_at=now)
        )
    return PushAck(ack_seq=ack_seq, accepted=accepted, duplicates=duplicates)


async def store_batch(engine: AsyncEngine, gateway: Gateway, batch: PushBatch) -> PushAck:
    events = _parse(batch)
    for attempt in range(_RETRIES):
        try:
            async with engine.begin() as conn:
                return await _store(conn, gateway, events)
        except sa.exc.IntegrityError as exc:
            # A concurrent push of the same events won the race; the retry sees them as known.
            if attempt == _RETRIES - 1:
                raise Conflict("concurrent push of the same events; retry") from exc
    raise AssertionError("unreachable")
