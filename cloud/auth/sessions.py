"""Sessions and the per-request check that makes revocation immediate.

Every authenticated request reads one row (the session joined to its user, both by primary key):
the session must be open, the user active and in the token's tenant, and the user's token
version must equal the token's. The role used for permissions comes from that row, not from the
token, so a demotion takes effect on the next request. Nothing is cached in the process, so this
holds across any number of API replicas."""

import uuid

import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.auth.permissions import Role, permissions_for
from cloud.auth.tokens import Principal
from cloud.context import CloudContext
from cloud.db import schema as t
from cloud.db.engine import read_rows
from cloud.db.times import as_utc, utcnow
from cloud.errors import Forbidden, Unauthorized

# What a user holding only a temporary password (admin reset) may call.
PASSWORD_CHANGE_PATHS = frozenset(
    {"/api/v1/auth/change-password", "/api/v1/auth/profile", "/api/v1/auth/logout"}
)

_CHECK = (
    sa.select(
        t.users.c.tenant_id,
        t.users.c.role,
        t.users.c.active,
        t.users.c.token_version,
        t.users.c.must_change_password,
        t.users.c.password_expires_at,
        t.user_sessions.c.revoked_at,
    )
    .select_from(t.user_sessions.join(t.users, t.users.c.id == t.user_sessions.c.user_id))
    .where(t.user_sessions.c.id == sa.bindparam("sid"), t.users.c.id == sa.bindparam("uid"))
)


async def authenticate(request: web.Request, ctx: CloudContext) -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token")
    claims = ctx.access_tokens.verify(token.strip())
    rows = await read_rows(ctx.engine, _CHECK, {"sid": claims.session_id, "uid": claims.user_id})
    row = rows[0] if rows else None
    if row is None or row.revoked_at is not None:
        raise Unauthorized("session has ended")
    if not row.active:
        raise Unauthorized("user is disabled")
    if row.token_version != claims.token_version or row.tenant_id != claims.tenant_id:
        raise Unauthorized("access token revoked")
    if temporary_password_expired(row):
        # Its 24 h are the same inside a session opened with it as at login.
        raise Unauthorized("the temporary password has expired")
    if row.must_change_password and request.path not in PASSWORD_CHANGE_PATHS:
        raise Forbidden("password change required", details={"password_change_required": True})
    role = Role(row.role)
    return Principal(
        user_id=claims.user_id,
        tenant_id=row.tenant_id,
        role=role,
        permissions=frozenset(permissions_for(role)),
        session_id=claims.session_id,
    )


def temporary_password_expired(user: sa.Row) -> bool:
    """A user row (with ``must_change_password`` and ``password_expires_at``) whose admin-issued
    temporary password is past its time."""
    expires = user.password_expires_at
    return bool(user.must_change_password) and expires is not None and as_utc(expires) <= utcnow()


async def open_session(conn: AsyncConnection, user_id: str) -> str:
    session_id = str(uuid.uuid4())
    await conn.execute(
        t.user_sessions.insert().values(id=session_id, user_id=user_id, created_at=utcnow())
    )
    return session_id


async def end_sessions(
    conn: AsyncConnection,
    *,
    user_id: str | None = None,
    session_id: str | None = None,
    keep_session_id: str | None = None,
) -> None:
    """Ends one session, or every session of a user (but ``keep_session_id``): the session row
    (access tokens) and its refresh tokens."""
    now = utcnow()
    sessions = t.user_sessions.update().where(t.user_sessions.c.revoked_at.is_(None))
    tokens = t.refresh_tokens.update().where(t.refresh_tokens.c.revoked_at.is_(None))
    if session_id is not None:
        sessions = sessions.where(t.user_sessions.c.id == session_id)
        tokens = tokens.where(t.refresh_tokens.c.family_id == session_id)
    elif user_id is not None:
        sessions = sessions.where(t.user_sessions.c.user_id == user_id)
        tokens = tokens.where(t.refresh_tokens.c.user_id == user_id)
        if keep_session_id is not None:
            sessions = sessions.where(t.user_sessions.c.id != keep_session_id)
            tokens = tokens.where(t.refresh_tokens.c.family_id != keep_session_id)
    else:
        raise ValueError("end_sessions needs a user or a session")
    await conn.execute(sessions.values(revoked_at=now))
    await conn.execute(tokens.values(revoked_at=now))
