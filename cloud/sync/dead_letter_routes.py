"""Operators list and retry the cloud's dead letters (public API, tenant-scoped)."""

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.auth.permissions import Permission
from cloud.db import schema as t
from cloud.db.rows import row_dict
from cloud.http.registry import Api, Call
from cloud.models.dead_letters import DeadLetterOut, DeadLettersQuery
from cloud.sync.dead_letters import opened_text
from cloud.sync.events import retry_dead_letter

api = Api("/api/v1")
TAG = "sync"


def _out(conn: AsyncConnection, row: Any) -> DeadLetterOut:
    values = row_dict(row)
    values["payload"] = opened_text(conn, row.gateway_id, row.event_id, row.payload)
    return DeadLetterOut.model_validate(values)


@api.route(
    "GET",
    "/sync/dead-letters",
    summary="Sync events the cloud could not accept or apply (newest first)",
    tag=TAG,
    query=DeadLettersQuery,
    response=DeadLetterOut,
    many=True,
    permission=Permission.SYNC_DEAD_LETTERS,
    errors=(),
)
async def list_dead_letters(call: Call) -> list[DeadLetterOut]:
    q = call.query(DeadLettersQuery)
    letters = t.sync_dead_letters
    query = sa.select(letters).where(letters.c.tenant_id == call.principal.tenant_id)
    if q.state != "all":
        query = query.where(letters.c.state == q.state)
    if q.site_id is not None:
        query = query.where(letters.c.site_id == q.site_id)
    if q.gateway_id is not None:
        query = query.where(letters.c.gateway_id == q.gateway_id)
    query = query.order_by(letters.c.last_seen_at.desc(), letters.c.id).limit(q.limit)
    async with call.ctx.engine.connect() as conn:
        rows = (await conn.execute(query.offset(q.offset))).all()
        return [_out(conn, row) for row in rows]


@api.route(
    "POST",
    "/sync/dead-letters/{letter_id}/retry",
    summary="Apply a dead letter's event again, once its cause is fixed",
    tag=TAG,
    response=DeadLetterOut,
    permission=Permission.SYNC_DEAD_LETTERS,
    errors=(409,),
)
async def retry(call: Call) -> DeadLetterOut:
    row = await retry_dead_letter(call.ctx.engine, call.principal.tenant_id, call.path("letter_id"))
    async with call.ctx.engine.connect() as conn:
        return _out(conn, row)
