"""Dropping account records nobody needs any more (``vending-cloud prune-auth``, run daily):
expired refresh tokens, sessions left without any, stale throttle rows, old audit rows."""

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.auth.throttle import delete_stale_rows
from cloud.db import schema as t
from cloud.db.times import utcnow
from cloud.settings import CloudSettings


@dataclass(frozen=True)
class Pruned:
    refresh_tokens: int
    sessions: int
    throttle_rows: int
    audit_rows: int


async def prune_auth_records(
    engine: AsyncEngine,
    settings: CloudSettings,
    *,
    audit_days: int,
    now: datetime | None = None,
) -> Pruned:
    now = now or utcnow()
    async with engine.begin() as conn:
        # An expired refresh token can neither be used nor reveal a reuse any more.
        tokens = await conn.execute(
            t.refresh_tokens.delete().where(t.refresh_tokens.c.expires_at < now)
        )
        # A session with no refresh token left can only hold access tokens, and those expire
        # within the access-token lifetime of the session's last refresh.
        live = sa.select(t.refresh_tokens.c.id).where(
            t.refresh_tokens.c.family_id == t.user_sessions.c.id
        )
        sessions = await conn.execute(
            t.user_sessions.delete().where(
                ~sa.exists(live),
                t.user_sessions.c.created_at
                < now - timedelta(seconds=settings.refresh_token_ttl_s),
            )
        )
        throttle_rows = await delete_stale_rows(conn, settings.login_failure_window_s, now)
        audit = await conn.execute(
            t.login_audit.delete().where(
                t.login_audit.c.created_at < now - timedelta(days=audit_days)
            )
        )
    return Pruned(tokens.rowcount, sessions.rowcount, throttle_rows, audit.rowcount)
