"""Users of the caller's tenant: create, list, change role or disable, delete, reset a password;
and the tenant's login audit. Another tenant's user is a 404."""

import secrets
import uuid
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.auth.permissions import Permission, Role
from cloud.auth.sessions import end_sessions
from cloud.db import schema as t
from cloud.db.rows import row_dict
from cloud.db.times import utcnow
from cloud.errors import Conflict, NotFound
from cloud.http.registry import Api, Call
from cloud.models.auth import LoginAuditOut, LoginAuditQuery
from cloud.models.users import PasswordReset, UserCreate, UserDeleted, UserOut, UserUpdate

api = Api("/api/v1")
TAG = "users"
_COLUMNS = [t.users.c[name] for name in UserOut.model_fields]
_AUDIT_COLUMNS = [t.login_audit.c[name] for name in LoginAuditOut.model_fields]
# How long an admin-issued temporary password opens change-password.
TEMPORARY_PASSWORD_TTL = timedelta(hours=24)


@api.route(
    "POST",
    "/users",
    summary="Add a user to the caller's tenant",
    tag=TAG,
    body=UserCreate,
    response=UserOut,
    status=201,
    permission=Permission.USERS_WRITE,
    errors=(409,),
)
async def create_user(call: Call) -> UserOut:
    body = call.body(UserCreate)
    password_hash = await call.ctx.passwords.hash(body.password)
    user_id = str(uuid.uuid4())
    tenant_id = call.principal.tenant_id
    async with call.ctx.engine.begin() as conn:
        # Only this tenant's users count: whether the address has an account in another tenant
        # is none of this tenant's business (and must not be learnable from the answer).
        taken = await conn.scalar(
            sa.select(t.users.c.id).where(
                t.users.c.tenant_id == tenant_id, t.users.c.email == body.email.lower()
            )
        )
        if taken is not None:
            raise Conflict("a user with this e-mail already exists in this tenant")
        await conn.execute(
            t.users.insert().values(
                id=user_id,
                tenant_id=tenant_id,
                email=body.email.lower(),
                password_hash=password_hash,
                role=body.role.value,
                active=True,
                created_at=utcnow(),
            )
        )
        row = (await conn.execute(sa.select(*_COLUMNS).where(t.users.c.id == user_id))).one()
    return UserOut.model_validate(row_dict(row))


@api.route(
    "GET",
    "/users",
    summary="Users of the caller's tenant",
    tag=TAG,
    response=UserOut,
    many=True,
    permission=Permission.USERS_READ,
    errors=(),
)
async def list_users(call: Call) -> list[UserOut]:
    async with call.ctx.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(*_COLUMNS)
            .where(t.users.c.tenant_id == call.principal.tenant_id)
            .order_by(t.users.c.created_at, t.users.c.email)
        )
        return [UserOut.model_validate(row_dict(r)) for r in rows]


async def _locked_user(conn: AsyncConnection, tenant_id: str, user_id: str) -> sa.Row:
    """The tenant's user, with the tenant row locked first: two admins demoting each other at
    once are serialized, so the last-admin check below cannot be raced (PostgreSQL; SQLite
    transactions already take the write lock up front)."""
    await conn.execute(
        sa.select(t.tenants.c.id).where(t.tenants.c.id == tenant_id).with_for_update()
    )
    row = (
        await conn.execute(
            sa.select(t.users)
            .where(t.users.c.id == user_id, t.users.c.tenant_id == tenant_id)
            # A login in flight for this user waits here, then sees what this change did.
            .with_for_update()
        )
    ).first()
    if row is None:
        raise NotFound("user not found")
    return row


async def _keep_an_admin(conn: AsyncConnection, user: sa.Row, stays_admin: bool) -> None:
    if user.role != Role.ADMIN.value or not user.active or stays_admin:
        return
    others = await conn.scalar(
        sa.select(sa.func.count())
        .select_from(t.users)
        .where(
            t.users.c.tenant_id == user.tenant_id,
            t.users.c.role == Role.ADMIN.value,
            t.users.c.active.is_(True),
            t.users.c.id != user.id,
        )
    )
    if not others:
        raise Conflict("the tenant's last active admin cannot be removed, demoted or disabled")


@api.route(
    "PATCH",
    "/users/{user_id}",
    summary="Change a user's role or disable/enable them (takes effect on their next request)",
    tag=TAG,
    body=UserUpdate,
    response=UserOut,
    permission=Permission.USERS_WRITE,
    errors=(409,),
)
async def update_user(call: Call) -> UserOut:
    body = call.body(UserUpdate)
    async with call.ctx.engine.begin() as conn:
        user = await _locked_user(conn, call.principal.tenant_id, call.path("user_id"))
        role = body.role.value if body.role is not None else user.role
        active = body.active if body.active is not None else user.active
        await _keep_an_admin(conn, user, stays_admin=role == Role.ADMIN.value and active)
        values: dict[str, object] = {"role": role, "active": active}
        disabling = user.active and not active
        if disabling:
            # Every token dies now; enabling the user again does not bring them back.
            values["token_version"] = user.token_version + 1
        # The user row first, then the sessions: a login in flight locks that row before it
        # opens a session, so it either sees the change or its session is ended here.
        await conn.execute(t.users.update().where(t.users.c.id == user.id).values(**values))
        if disabling:
            await end_sessions(conn, user_id=user.id)
        row = (await conn.execute(sa.select(*_COLUMNS).where(t.users.c.id == user.id))).one()
    return UserOut.model_validate(row_dict(row))


@api.route(
    "DELETE",
    "/users/{user_id}",
    summary="Delete a user (their tokens stop working at once)",
    tag=TAG,
    response=UserDeleted,
    permission=Permission.USERS_WRITE,
    errors=(409,),
)
async def delete_user(call: Call) -> UserDeleted:
    async with call.ctx.engine.begin() as conn:
        user = await _locked_user(conn, call.principal.tenant_id, call.path("user_id"))
        await _keep_an_admin(conn, user, stays_admin=False)
        # The session rows go with the user, so any access token naming them finds nothing.
        await conn.execute(t.refresh_tokens.delete().where(t.refresh_tokens.c.user_id == user.id))
        await conn.execute(t.user_sessions.delete().where(t.user_sessions.c.user_id == user.id))
        await conn.execute(t.users.delete().where(t.users.c.id == user.id))
    return UserDeleted(id=user.id, deleted=True)


@api.route(
    "POST",
    "/users/{user_id}/password-reset",
    summary="Reset a user's password to a one-time temporary one (shown once)",
    tag=TAG,
    response=PasswordReset,
    permission=Permission.USERS_WRITE,
    errors=(409,),
)
async def reset_password(call: Call) -> PasswordReset:
    if call.path("user_id") == call.principal.user_id:
        raise Conflict("use change-password for your own account")
    temporary = secrets.token_urlsafe(15)
    password_hash = await call.ctx.passwords.hash(temporary)
    expires_at = utcnow() + TEMPORARY_PASSWORD_TTL
    async with call.ctx.engine.begin() as conn:
        user = await _locked_user(conn, call.principal.tenant_id, call.path("user_id"))
        # The user row before the sessions, like a disable (a login in flight locks the row).
        await conn.execute(
            t.users.update()
            .where(t.users.c.id == user.id)
            .values(
                password_hash=password_hash,
                must_change_password=True,
                password_expires_at=expires_at,
                token_version=user.token_version + 1,
            )
        )
        await end_sessions(conn, user_id=user.id)
    return PasswordReset(user_id=user.id, temporary_password=temporary, expires_at=expires_at)


@api.route(
    "GET",
    "/audit/logins",
    summary="Login attempts on the caller's tenant's accounts, newest first",
    tag="audit",
    query=LoginAuditQuery,
    response=LoginAuditOut,
    many=True,
    permission=Permission.LOGINS_AUDIT,
    errors=(),
)
async def login_audit(call: Call) -> list[LoginAuditOut]:
    q = call.query(LoginAuditQuery)
    query = sa.select(*_AUDIT_COLUMNS).where(t.login_audit.c.tenant_id == call.principal.tenant_id)
    if q.outcome is not None:
        query = query.where(t.login_audit.c.outcome == q.outcome)
    query = (
        query.order_by(t.login_audit.c.created_at.desc(), t.login_audit.c.id)
        .limit(q.limit)
        .offset(q.offset)
    )
    async with call.ctx.engine.connect() as conn:
        return [LoginAuditOut.model_validate(row_dict(r)) for r in await conn.execute(query)]
