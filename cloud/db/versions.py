"""The global machine-state version that drives the gateways' pull cursor.

One counter row shared by every machine: an UPDATE ... RETURNING takes its row lock, so versions
are unique and grow in commit order on Postgres, and SQLite has one writer anyway.
"""

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.db import schema as t
from cloud.db.times import utcnow
from cloud.sync.outbox import request_pull

MACHINE_VERSION = "machine_version"


async def next_version(conn: AsyncConnection) -> int:
    value = await conn.scalar(
        t.counters.update()
        .where(t.counters.c.name == MACHINE_VERSION)
        .values(value=t.counters.c.value + 1)
        .returning(t.counters.c.value)
    )
    if value is None:
        raise RuntimeError("counter row missing; run the migrations")
    return int(value)


async def bump_machine(conn: AsyncConnection, machine_id: str) -> list[str]:
    """Give the machine a new version and queue ``state.changed`` for its site's gateways.

    Returns the gateway ids to wake once the transaction has committed."""
    version = await next_version(conn)
    site_id = await conn.scalar(
        t.machines.update()
        .where(t.machines.c.id == machine_id)
        .values(version=version, updated_at=utcnow())
        .returning(t.machines.c.site_id)
    )
    if site_id is None:
        return []
    return await request_pull(conn, site_id)


async def current(conn: AsyncConnection) -> int:
    value = await conn.scalar(
        sa.select(t.counters.c.value).where(t.counters.c.name == MACHINE_VERSION)
    )
    return int(value or 0)
