"""Machine and catalog queries shared by the operator API and the sync pull."""

import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.db import schema as t
from cloud.db.rows import row_dict
from cloud.db.times import utcnow
from cloud.errors import Conflict, NotFound
from cloud.models.machines import CatalogItemIn


async def get_machine(conn: AsyncConnection, tenant_id: str, machine_id: str) -> sa.Row[Any]:
    row = (
        await conn.execute(
            sa.select(t.machines).where(
                t.machines.c.id == machine_id, t.machines.c.tenant_id == tenant_id
            )
        )
    ).first()
    if row is None:
        raise NotFound(f"machine {machine_id} not found")
    return row


async def catalogs(
    conn: AsyncConnection, machine_ids: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    result: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if not machine_ids:
        return result
    rows = await conn.execute(
        sa.select(t.catalog_items)
        .where(t.catalog_items.c.machine_id.in_(list(machine_ids)))
        .order_by(t.catalog_items.c.slot)
    )
    for row in rows:
        result[row.machine_id].append(row_dict(row))
    return result


def check_unique_slots(items: Sequence[CatalogItemIn]) -> None:
    seen: set[str] = set()
    for item in items:
        if item.slot in seen:
            raise Conflict(f"slot {item.slot} appears twice", details={"slot": item.slot})
        seen.add(item.slot)


async def replace_catalog(
    conn: AsyncConnection, machine_id: str, currency: str, items: Sequence[CatalogItemIn]
) -> None:
    """Make the machine's catalog exactly ``items`` (matched by slot). A quantity given by the
    operator is a restock and bumps that item's ``stock_rev``."""
    check_unique_slots(items)
    existing = {
        row.slot: row
        for row in await conn.execute(
            sa.select(t.catalog_items).where(t.catalog_items.c.machine_id == machine_id)
        )
    }
    now = utcnow()
    wanted = {item.slot for item in items}
    gone = [row.id for slot, row in existing.items() if slot not in wanted]
    if gone:
        await conn.execute(t.catalog_items.delete().where(t.catalog_items.c.id.in_(gone)))
    for item in items:
        values: dict[str, Any] = {
            "name": item.name,
            "category": item.category,
            "price": item.price,
            "currency": currency,
            "capacity": item.capacity,
            "image_url": item.image_url,
            "active": item.active,
            "updated_at": now,
        }
        current = existing.get(item.slot)
        if current is None:
            await conn.execute(
                t.catalog_items.insert().values(
                    id=str(uuid.uuid4()),
                    machine_id=machine_id,
                    slot=item.slot,
                    quantity=item.quantity or 0,
                    stock_rev=1 if item.quantity is not None else 0,
                    **values,
                )
            )
            continue
        if item.quantity is not None:
            values["quantity"] = item.quantity
            values["stock_rev"] = current.stock_rev + 1
        await conn.execute(
            t.catalog_items.update().where(t.catalog_items.c.id == current.id).values(**values)
        )
