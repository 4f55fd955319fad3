"""Secrets at rest in the cloud database: machine command keys and customer phone numbers are
sealed values (``contracts.sealing``), bound to their row (``machines.command_key:<id>``,
``orders.customer_phone:<id>``).

The key ring travels with the engine as an execution option (``with_keys``), so every
connection taken from the context's engine can seal and open without each query site being
handed the key ring. A connection from an engine without it raises instead of passing ciphertext
on as if it were the value.

``sealing_keys`` holds one canary per master key id that has sealed something: at start the
cloud opens each one and refuses to run when a key is missing or different, rather than failing
later in the middle of a sync. Rows still in plaintext (written before revision 0005, which has
no key to seal them with) are sealed at start; ``vending-cloud rekey`` re-seals everything under
the active key.
"""

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cloud.db import schema as t
from cloud.db.times import utcnow
from cloud.errors import ConfigurationError
from contracts.sealing import KeyRing, SealingError

_OPTION = "vending_sealing_keys"


class SealedDataError(ConfigurationError):
    """The configured master keys do not open this database's sealed values."""


def with_keys(engine: AsyncEngine, ring: KeyRing) -> AsyncEngine:
    return engine.execution_options(**{_OPTION: ring})


def ring_of(conn: AsyncConnection | AsyncEngine) -> KeyRing:
    ring = conn.sync_engine.get_execution_options().get(_OPTION)
    if not isinstance(ring, KeyRing):
        raise ConfigurationError("no master key is bound to this database engine")
    return ring


def _command_key_context(machine_id: str) -> str:
    return f"machines.command_key:{machine_id}"


def _phone_context(order_id: str) -> str:
    return f"orders.customer_phone:{order_id}"


def seal_command_key(conn: AsyncConnection, machine_id: str, key_hex: str) -> str:
    return ring_of(conn).seal(key_hex, _command_key_context(machine_id))


def open_command_key(conn: AsyncConnection | AsyncEngine, machine_id: str, sealed: str) -> str:
    try:
        return ring_of(conn).open(sealed, _command_key_context(machine_id))
    except SealingError as exc:
        raise SealedDataError(str(exc)) from exc


def seal_phone(conn: AsyncConnection, order_id: str, phone: str | None) -> str | None:
    return ring_of(conn).seal_optional(phone, _phone_context(order_id))


def open_phone(conn: AsyncConnection, order_id: str, sealed: str | None) -> str | None:
    try:
        return ring_of(conn).open_optional(sealed, _phone_context(order_id))
    except SealingError as exc:
        raise SealedDataError(str(exc)) from exc


def seal_event_payload(
    conn: AsyncConnection, event_id: str, payload: dict[str, Any]
) -> dict[str, Any]:
    """A pushed event as kept in ``sync_events``: an order snapshot's phone number sealed."""
    phone = payload.get("customer_phone")
    if not isinstance(phone, str):
        return payload
    return payload | {"customer_phone": ring_of(conn).seal(phone, _event_context(event_id))}


def _event_context(event_id: str) -> str:
    return f"sync_events.customer_phone:{event_id}"


def open_order_row(conn: AsyncConnection, row: dict[str, Any]) -> dict[str, Any]:
    """An orders row as a dict with its phone number opened."""
    if row.get("customer_phone") is None:
        return row
    return row | {"customer_phone": open_phone(conn, row["id"], row["customer_phone"])}


# --- start-up check, plaintext sealing and rekey --------------------------------------------


async def check_keys(conn: AsyncConnection) -> None:
    ring = ring_of(conn)
    rows = (await conn.execute(sa.select(t.sealing_keys.c.kid, t.sealing_keys.c.canary))).all()
    for kid, canary in rows:
        try:
            ring.check_canary(kid, canary)
        except SealingError as exc:
            raise SealedDataError(f"master keys: {exc}") from exc


async def _mark_active(conn: AsyncConnection) -> None:
    ring = ring_of(conn)
    known = await conn.scalar(
        sa.select(t.sealing_keys.c.kid).where(t.sealing_keys.c.kid == ring.active)
    )
    if known is None:
        await conn.execute(
            t.sealing_keys.insert().values(
                kid=ring.active, canary=ring.canary(ring.active), created_at=utcnow()
            )
        )


@dataclass(frozen=True)
class RekeyReport:
    command_keys: int
    phones: int
    events: int
    retired_keys: list[str]
    provider_secrets: int = 0


async def _reseal_column(
    conn: AsyncConnection, table: sa.Table, column: str, context: str, *, only_plaintext: bool
) -> int:
    ring = ring_of(conn)
    col = table.c[column]
    query = sa.select(table.c.id, col).where(col.is_not(None))
    if only_plaintext:
        query = query.where(sa.not_(col.like("v1.%")))
    count = 0
    for row_id, value in (await conn.execute(query)).all():
        if not ring.needs_reseal(value):
            continue
        try:
            resealed = ring.reseal(value, f"{context}:{row_id}")
        except SealingError as exc:
            raise SealedDataError(f"master keys: {exc}") from exc
        # Guarded by the old value: a second process doing the same at the same time is harmless.
        result = await conn.execute(
            table.update().where(table.c.id == row_id, col == value).values({column: resealed})
        )
        count += result.rowcount
    return count


async def _reseal_events(conn: AsyncConnection) -> int:
    """Order snapshots kept in ``sync_events`` (the dedupe record of every pushed event). Only
    ``rekey`` walks them: the table grows with every sale, too big to scan at each start."""
    ring = ring_of(conn)
    rows = await conn.execute(
        sa.select(t.sync_events.c.event_id, t.sync_events.c.payload).where(
            t.sync_events.c.type == "order.snapshot"
        )
    )
    count = 0
    for event_id, payload in rows.all():
        phone = payload.get("customer_phone") if isinstance(payload, dict) else None
        if not isinstance(phone, str) or not ring.needs_reseal(phone):
            continue
        try:
            resealed = ring.reseal(phone, _event_context(event_id))
        except SealingError as exc:
            raise SealedDataError(f"master keys: {exc}") from exc
        await conn.execute(
            t.sync_events.update()
            .where(t.sync_events.c.event_id == event_id)
            .values(payload=payload | {"customer_phone": resealed})
        )
        count += 1
    return count


async def seal_plaintext(engine: AsyncEngine) -> int:
    """At start: check the canaries, seal rows written before sealing existed, mark the active
    key. Raises ``SealedDataError`` (a ``ConfigurationError``) when a key does not match."""
    async with engine.begin() as conn:
        await check_keys(conn)
        count = await _reseal_column(
            conn, t.machines, "command_key", "machines.command_key", only_plaintext=True
        )
        count += await _reseal_column(
            conn, t.orders, "customer_phone", "orders.customer_phone", only_plaintext=True
        )
        await _mark_active(conn)
    return count


async def rekey(engine: AsyncEngine) -> RekeyReport:
    """Re-seal every value under the active key and drop the canaries of the keys no longer
    used (they may then be removed from the settings)."""
    async with engine.begin() as conn:
        await check_keys(conn)
        keys = await _reseal_column(
            conn, t.machines, "command_key", "machines.command_key", only_plaintext=False
        )
        phones = await _reseal_column(
            conn, t.orders, "customer_phone", "orders.customer_phone", only_plaintext=False
        )
        events = await _reseal_events(conn)
        # Imported here: the dead letters build on this module.
        from cloud.sync.dead_letters import reseal as reseal_dead_letters

        events += await reseal_dead_letters(conn)
        from cloud.payments.registry import reseal as reseal_provider_secrets

        provider_secrets = await reseal_provider_secrets(conn)
        await _mark_active(conn)
        active = ring_of(conn).active
        retired = list(
            (
                await conn.scalars(
                    sa.select(t.sealing_keys.c.kid).where(t.sealing_keys.c.kid != active)
                )
            ).all()
        )
        await conn.execute(t.sealing_keys.delete().where(t.sealing_keys.c.kid != active))
    return RekeyReport(keys, phones, events, sorted(retired), provider_secrets)
