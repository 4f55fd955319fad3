"""A machine's free cash credit as the cloud knows it: the sum of the credit entries its gateway
pushed (``credit.entry`` events), and the balance the gateway itself last reported."""

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.db import schema as t
from cloud.db.rows import row_dict
from cloud.reports.models import CreditEntryOut, CreditQuery, MachineCredit

_ENTRY_FIELDS = list(CreditEntryOut.model_fields)


async def balance(conn: AsyncConnection, machine_id: str, currency: str) -> int:
    value = await conn.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(t.credit_entries.c.delta), 0)).where(
            t.credit_entries.c.machine_id == machine_id,
            t.credit_entries.c.currency == currency,
        )
    )
    return int(value or 0)


async def machine_credit(
    conn: AsyncConnection, machine: sa.Row[Any], query: CreditQuery
) -> MachineCredit:
    ce = t.credit_entries
    mine = sa.and_(ce.c.machine_id == machine.id, ce.c.currency == machine.currency)
    total = int(await conn.scalar(sa.select(sa.func.count()).where(mine)) or 0)
    # Newest first by the gateway's clock; the entry id breaks ties so pages never overlap.
    order = (ce.c.occurred_at.desc(), ce.c.received_at.desc(), ce.c.entry_id.desc())
    latest = (await conn.execute(sa.select(ce).where(mine).order_by(*order).limit(1))).first()
    rows = await conn.execute(
        sa.select(*[ce.c[f] for f in _ENTRY_FIELDS])
        .where(mine)
        .order_by(*order)
        .limit(query.limit)
        .offset(query.offset)
    )
    return MachineCredit(
        machine_id=machine.id,
        currency=machine.currency,
        balance=await balance(conn, machine.id, machine.currency),
        last_balance_reported=latest.balance if latest is not None else None,
        last_reported_at=row_dict(latest)["occurred_at"] if latest is not None else None,
        entries_total=total,
        entries=[CreditEntryOut.model_validate(row_dict(r)) for r in rows],
    )
