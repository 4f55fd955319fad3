"""Login (throttled and audited), refresh-token rotation (with reuse detection), logout, password
change and the caller's profile."""

import asyncio
import uuid
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.auth.permissions import Role, permissions_for
from cloud.auth.sessions import end_sessions, open_session, temporary_password_expired
from cloud.auth.throttle import Throttle, record_login, record_refusal
from cloud.auth.tokens import new_opaque_token, token_digest
from cloud.db import schema as t
from cloud.db.times import as_utc, utcnow
from cloud.errors import (
    Conflict,
    Forbidden,
    NotFound,
    TooManyRequests,
    Unauthorized,
    ValidationFailed,
)
from cloud.http import peers
from cloud.http.registry import Api, Call
from cloud.models.auth import (
    ChangePasswordRequest,
    LoginRequest,
    LogoutResult,
    PasswordChanged,
    Profile,
    RefreshRequest,
    TokenPair,
)

api = Api("/api/v1/auth")
TAG = "auth"
# One e-mail may have an account in several tenants; a login checks the password against each.
_MAX_ACCOUNTS_PER_EMAIL = 10


def client_address(call: Call) -> str:
    # The TCP peer; behind a reverse proxy listed in TRUSTED_PROXIES, the address it saw.
    return peers.client_address(call.request, call.ctx.settings.trusted_proxies)


async def _issue_pair(
    call: Call, conn: AsyncConnection, user: sa.Row, session_id: str
) -> tuple[TokenPair, str]:
    refresh = new_opaque_token()
    token_id = str(uuid.uuid4())
    now = utcnow()
    await conn.execute(
        t.refresh_tokens.insert().values(
            id=token_id,
            user_id=user.id,
            family_id=session_id,
            token_hash=token_digest(refresh),
            expires_at=now + timedelta(seconds=call.ctx.settings.refresh_token_ttl_s),
            created_at=now,
        )
    )
    access = call.ctx.access_tokens.issue(
        user.id, user.tenant_id, Role(user.role), session_id, user.token_version
    )
    pair = TokenPair(
        access_token=access,
        refresh_token=refresh,
        expires_in=call.ctx.access_tokens.ttl_s,
        password_change_required=bool(user.must_change_password),
    )
    return pair, token_id


def _usable(account: sa.Row, now: datetime) -> str | None:
    """Why an account whose password matched still may not log in, or None."""
    if not account.active:
        return "disabled"
    expires = account.password_expires_at
    if account.must_change_password and expires is not None and as_utc(expires) <= now:
        return "temporary_password_expired"
    return None


@api.route(
    "POST",
    "/login",
    summary="Log in (throttled: 429 with Retry-After after repeated failures)",
    tag=TAG,
    body=LoginRequest,
    response=TokenPair,
    public=True,
    errors=(401, 409, 429, 503),
)
async def login(call: Call) -> TokenPair:
    body = call.body(LoginRequest)
    email = body.email.lower()
    address = client_address(call)
    throttle = Throttle.from_settings(call.ctx.settings)
    engine = call.ctx.engine
    try:
        async with engine.begin() as conn:
            reservation = await throttle.reserve(conn, email, address)
    except TooManyRequests:
        async with engine.begin() as conn:
            await record_refusal(conn, email=email, address=address)
        raise

    query = sa.select(t.users).where(t.users.c.email == email)
    if body.tenant_id is not None:
        query = query.where(t.users.c.tenant_id == body.tenant_id)
    async with engine.connect() as conn:
        accounts = (
            await conn.execute(query.order_by(t.users.c.created_at).limit(_MAX_ACCOUNTS_PER_EMAIL))
        ).all()
    # Always the same number of hash checks (real ones, then dummies), at least
    # LOGIN_PASSWORD_CHECKS: otherwise a login to an address that also has an account in another
    # tenant would take one hash longer, and that tenant's existence could be timed.
    # Under the account-wide lock only the accounts this address is trusted for are checked
    # (the others get a dummy check), so a same-e-mail account in another tenant cannot be used
    # to guess this one past the lock.
    stored = [a.password_hash if a.active and reservation.admits(a.id) else None for a in accounts]
    padding = max(0, call.ctx.settings.login_password_checks - len(stored))
    results = await asyncio.gather(
        *(call.ctx.passwords.verify(h, body.password) for h in stored + [None] * padding)
    )
    checks = results[: len(accounts)]
    now = utcnow()
    matched = [a for a, ok in zip(accounts, checks, strict=False) if ok and _usable(a, now) is None]
    if not matched and reservation.only is not None:
        async with engine.begin() as conn:
            await record_refusal(conn, email=email, address=address)
        raise reservation.refusal()
    if len(matched) != 1:
        async with engine.begin() as conn:
            if matched:
                await throttle.forgive(conn, email, address)
            if not accounts:
                await record_login(
                    conn, email=email, address=address, outcome="failure", reason="unknown_email"
                )
            for account, ok in zip(accounts, checks, strict=False):
                if account in matched:
                    outcome, reason = "refused", "several_tenants"
                else:
                    outcome = "failure"
                    reason = (_usable(account, now) if ok else None) or (
                        "bad_password" if account.active else "disabled"
                    )
                await record_login(
                    conn,
                    email=email,
                    address=address,
                    outcome=outcome,
                    reason=reason,
                    tenant_id=account.tenant_id,
                    user_id=account.id,
                )
        if matched:
            # Only someone holding the right password for every one of them gets here.
            raise Conflict(
                "this e-mail and password open several tenants; give tenant_id",
                details={"tenant_ids": [a.tenant_id for a in matched]},
            )
        raise Unauthorized("invalid e-mail or password")
    user = matched[0]
    async with engine.begin() as conn:
        # The password was checked against the row read before hashing. A password change,
        # reset, disable or delete that committed meanwhile ended the user's sessions already,
        # so a session opened now on the old password would outlive it. The row lock orders
        # this against those writes (they update the user before ending sessions).
        current = (
            await conn.execute(
                sa.select(t.users.c.password_hash, t.users.c.token_version, t.users.c.active)
                .where(t.users.c.id == user.id)
                .with_for_update()
            )
        ).first()
        if current is not None and tuple(current) == (
            user.password_hash,
            user.token_version,
            user.active,
        ):
            await throttle.forgive(conn, email, address)
            await record_login(
                conn,
                email=email,
                address=address,
                outcome="success",
                reason="temporary_password" if user.must_change_password else "password",
                tenant_id=user.tenant_id,
                user_id=user.id,
            )
            session_id = await open_session(conn, user.id)
            pair, _ = await _issue_pair(call, conn, user, session_id)
            return pair
    async with engine.begin() as conn:
        await record_login(
            conn,
            email=email,
            address=address,
            outcome="failure",
            reason="bad_password",
            tenant_id=user.tenant_id,
            user_id=user.id if current is not None else None,
        )
    raise Unauthorized("invalid e-mail or password")


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
    errors=(401,),
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
            if temporary_password_expired(user):
                raise Unauthorized("the temporary password has expired")
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
        async with call.ctx.engine.begin() as conn:
            await end_sessions(conn, session_id=family_id)
        raise Unauthorized("refresh token reuse detected; session revoked") from exc


@api.route(
    "POST",
    "/logout",
    summary="End a refresh token's session (its access tokens stop working at once)",
    tag=TAG,
    body=RefreshRequest,
    response=LogoutResult,
    public=True,
    errors=(401,),
)
async def logout(call: Call) -> LogoutResult:
    digest = token_digest(call.body(RefreshRequest).refresh_token)
    async with call.ctx.engine.begin() as conn:
        family = await conn.scalar(
            sa.select(t.refresh_tokens.c.family_id).where(t.refresh_tokens.c.token_hash == digest)
        )
        if family is None:
            raise Unauthorized("invalid refresh token")
        await end_sessions(conn, session_id=family)
    return LogoutResult(revoked=True)


@api.route(
    "POST",
    "/change-password",
    summary="Change the caller's password; ends the caller's other sessions",
    tag=TAG,
    body=ChangePasswordRequest,
    response=PasswordChanged,
    errors=(403, 429, 503),
)
async def change_password(call: Call) -> PasswordChanged:
    body = call.body(ChangePasswordRequest)
    principal = call.principal
    if body.new_password == body.current_password:
        raise ValidationFailed("the new password must differ from the current one")
    engine = call.ctx.engine
    async with engine.connect() as conn:
        user = (
            await conn.execute(sa.select(t.users).where(t.users.c.id == principal.user_id))
        ).one()
    address = client_address(call)
    throttle = Throttle.from_settings(call.ctx.settings)
    # A stolen access token must not become a way to guess the password without limits, nor
    # one that leaves no trace: every check is in the login audit like a login's.
    try:
        async with engine.begin() as conn:
            reservation = await throttle.reserve(conn, user.email, address)
        if not reservation.admits(user.id):
            raise reservation.refusal()
    except TooManyRequests:
        async with engine.begin() as conn:
            await record_refusal(conn, email=user.email, address=address)
        raise
    audit = {"email": user.email, "address": address, "tenant_id": user.tenant_id}
    if not await call.ctx.passwords.verify(user.password_hash, body.current_password):
        async with engine.begin() as conn:
            await record_login(
                conn,
                outcome="failure",
                reason="change_password_bad_password",
                user_id=user.id,
                **audit,
            )
        # Not 401: the caller's session is fine, only the password they typed is not.
        raise Forbidden("current password is wrong")
    new_hash = await call.ctx.passwords.hash(body.new_password)
    async with engine.begin() as conn:
        # Only over the password just checked (the user row first, as a login locks it): a
        # change or reset that committed meanwhile wins, and this one is refused.
        changed = await conn.execute(
            t.users.update()
            .where(t.users.c.id == user.id, t.users.c.password_hash == user.password_hash)
            .values(password_hash=new_hash, must_change_password=False, password_expires_at=None)
        )
        if changed.rowcount == 1:
            await end_sessions(conn, user_id=user.id, keep_session_id=principal.session_id)
            await throttle.forgive(conn, user.email, address)
            await record_login(
                conn, outcome="success", reason="password_changed", user_id=user.id, **audit
            )
    if changed.rowcount != 1:
        raise Forbidden("current password is wrong")
    return PasswordChanged(changed=True, other_sessions_ended=True)


@api.route("GET", "/profile", summary="The caller's profile", tag=TAG, response=Profile, errors=())
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
        password_change_required=bool(row.must_change_password),
    )
