"""Messages waiting for a gateway's push channel (``channel_messages``)."""

import uuid
from collections.abc import Collection, Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.db import schema as t
from cloud.db.times import utcnow
from contracts.sync import ChannelMessage


async def enqueue(
    conn: AsyncConnection, gateway_ids: Iterable[str], type_: str, payload: dict[str, Any]
) -> list[str]:
    ids: list[str] = []
    now = utcnow()
    for gateway_id in gateway_ids:
        message_id = str(uuid.uuid4())
        await conn.execute(
            t.channel_messages.insert().values(
                id=message_id, gateway_id=gateway_id, type=type_, payload=payload, created_at=now
            )
        )
        ids.append(message_id)
    return ids


async def site_gateways(conn: AsyncConnection, site_id: str) -> list[str]:
    rows = await conn.execute(
        sa.select(t.gateways.c.id).where(
            t.gateways.c.site_id == site_id, t.gateways.c.status == "active"
        )
    )
    return [row.id for row in rows]


async def request_pull(conn: AsyncConnection, site_id: str) -> list[str]:
    """Tell the site's gateways to pull state now.

    Each gateway keeps at most one unacked ``state.changed``: an older one is replaced by a
    fresh id rather than kept, because it may already be in flight, and a pull the gateway
    made for it may have run before this change committed."""
    targets = await site_gateways(conn, site_id)
    if targets:
        await conn.execute(
            t.channel_messages.delete().where(
                t.channel_messages.c.gateway_id.in_(targets),
                t.channel_messages.c.type == "state.changed",
                t.channel_messages.c.acked_at.is_(None),
            )
        )
    await enqueue(conn, targets, "state.changed", {})
    return targets


async def pending(
    conn: AsyncConnection, gateway_id: str, already_sent: Collection[str], limit: int = 100
) -> list[ChannelMessage]:
    query = (
        sa.select(t.channel_messages)
        .where(
            t.channel_messages.c.gateway_id == gateway_id,
            t.channel_messages.c.acked_at.is_(None),
        )
        .order_by(t.channel_messages.c.created_at, t.channel_messages.c.id)
        .limit(limit + len(already_sent))
    )
    rows = (await conn.execute(query)).all()
    return [
        ChannelMessage(id=row.id, type=row.type, payload=row.payload)
        for row in rows
        if row.id not in already_sent
    ][:limit]


async def acknowledge(conn: AsyncConnection, gateway_id: str, message_id: str) -> bool:
    result = await conn.execute(
        t.channel_messages.update()
        .where(
            t.channel_messages.c.id == message_id,
            t.channel_messages.c.gateway_id == gateway_id,
            t.channel_messages.c.acked_at.is_(None),
        )
        .values(acked_at=utcnow())
    )
    return result.rowcount == 1
