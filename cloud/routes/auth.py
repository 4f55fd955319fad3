"""Login, refresh-token rotation (with reuse detection), logout and the caller's profile."""

import uuid
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.auth.permissions import Role, permissions_for
from cloud.auth.tokens import new_opaque_token, token_digest
from cloud.db import schema as t
from cloud.db.times import as_utc, utcnow
from cloud.errors import NotFound, Unauthorized
from cloud.http.registry import Api, Call
from cloud.models.auth import LoginRequest, LogoutResult, Profile, RefreshRequest, TokenPair

api = Api("/api/v1/auth")
TAG = "auth"


async def _issue_pair(
    call: Call, conn: AsyncConnection, user: sa.Row, family_id: str
) -> tuple[TokenPair, str]:
    refresh = new_opaque_token()
    token_id = str(uuid.uuid4())
    now = utcnow()
    await conn.execute(
        t.refresh_tokens.insert().values(
            id=token_id,
            user_id=user.id,
            family_id=family_id,
            token_hash=token_digest(refresh),
            expires_at=now + timedelta(seconds=call.ctx.settings.refresh_token_ttl_s),
            created_at=now,
        )
    )
    access = call.ctx.access_tokens.issue(user.id, user.tenant_id, Role(user.role))
    pair = TokenPair(
        access_token=access, refresh_token=refresh, expires_in=call.ctx.access_tokens.ttl_s
    )
    return pair, token_id


@api.route(
    "POST", "/login", summary="Log in", tag=TAG, body=LoginRequest, response=TokenPair, public=True
)
async def login(call: Call) -> TokenPair:
    body = call.body(LoginRequest)
    async with call.ctx.engine.connect() as conn:
        user = (
            await conn.execute(sa.select(t.users).where(t.users.c.email == body.email.lower()))
        ).first()
    stored = user.password_hash if user is not None and user.active else None
    if not await call.ctx.passwords.verify(stored, body.password) or user is None:
        raise Unauthorized("invalid e-mail or password")
    async with call.ctx.engine.begin() as conn:
        pair, _ = await _issue_pair(call, conn, user, str(uuid.uuid4()))
    return pair


async def _revoke_family(call: Call, family_id: str) -> None:
    async with call.ctx.engine.begin() as conn:
        await conn.execute(
            t.refresh_tokens.update()
            .where(
                t.refresh_tokens.c.family_id == family_id, t.refresh_tokens.c.revoked_at.is_(None)
            )
            .values(revoked_at=utcnow())
        )


class _RotationLost(Exception):
    """Another request rotated the same token first."""


@api.route(
    "POST",
    "/refresh",
    summary="Rotate a refresh token",
    tag=TAG,
    body=RefreshRequest,
    response=TokenPair,
    public=True,
)
async def refresh(call: Call) -> TokenPair:
    digest = token_digest(call.body(RefreshRequest).refresh_token)
    try:
        async with call.ctx.engine.begin() as conn:
            token = (
                await conn.execute(
                    sa.select(t.refresh_tokens).where(t.refresh_tokens.c.token_hash == digest)
                )
            ).first()
            if token is None:
                raise Unauthorized("invalid refresh token")
            family_id = token.family_id
            if token.replaced_by is not None:
                raise _RotationLost
            user = (
                await conn.execute(sa.select(t.users).where(t.users.c.id == token.user_id))
            ).one()
            if token.revoked_at is not None or as_utc(token.expires_at) <= utcnow():
                raise Unauthorized("refresh token expired or revoked")
            if not user.active:
                raise Unauthorized("user is disabled")
            pair, new_id = await _issue_pair(call, conn, user, family_id)
            # Conditional, so two concurrent uses of one token cannot both rotate it.
            rotated = await conn.execute(
                t.refresh_tokens.update()
                .where(t.refresh_tokens.c.id == token.id, t.refresh_tokens.c.revoked_at.is_(None))
                .values(revoked_at=utcnow(), replaced_by=new_id)
            )
            if rotated.rowcount != 1:
                raise _RotationLost
            return pair
    except _RotationLost as exc:
        # A rotated token came back: someone holds a copy. End the whole session.
        await _revoke_family(call, family_id)
        raise Unauthorized("refresh token reuse detected; session revoked") from exc


@api.route(
    "POST",
    "/logout",
    summary="Revoke a refresh token's session",
    tag=TAG,
    body=RefreshRequest,
    response=LogoutResult,
    public=True,
)
async def logout(call: Call) -> LogoutResult:
    digest = token_digest(call.body(RefreshRequest).refresh_token)
    async with call.ctx.engine.connect() as conn:
        family = await conn.scalar(
            sa.select(t.refresh_tokens.c.family_id).where(t.refresh_tokens.c.token_hash == digest)
        )
    if family is None:
        raise Unauthorized("invalid refresh token")
    await _revoke_family(call, family)
    return LogoutResult(revoked=True)


@api.route("GET", "/profile", summary="The caller's profile", tag=TAG, response=Profile)
async def profile(call: Call) -> Profile:
    principal = call.principal
    async with call.ctx.engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(t.users, t.tenants.c.name.label("tenant_name"))
                .join(t.tenants, t.tenants.c.id == t.users.c.tenant_id)
                .where(
                    t.users.c.id == principal.user_id, t.users.c.tenant_id == principal.tenant_id
                )
            )
        ).first()
    if row is None:
        raise NotFound("user not found")
    return Profile(
        id=row.id,
        email=row.email,
        role=row.role,
        tenant_id=row.tenant_id,
        tenant_name=row.tenant_name,
        permissions=permissions_for(Role(row.role)),
    )
