"""The tenant's payment provider (Razorpay credentials) and money policy; admins only.

Secrets are write-only: stored sealed (``cloud.payments.registry.seal_secret``), never returned
(the answer says only whether each is set) and never written to the audit. Every change is an
``operator_audit`` row and gives each of the tenant's machines a new version, so their gateways
pull the new ``MachineState.money_policy`` (UPI offered or not, refund policy) at once.
"""

import uuid
from datetime import datetime
from typing import Annotated, Literal

import sqlalchemy as sa
from pydantic import Field, StrictBool, StrictInt
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.auth.permissions import Permission
from cloud.db import schema as t
from cloud.db.times import as_utc, utcnow
from cloud.db.versions import next_version
from cloud.errors import ValidationFailed
from cloud.http.registry import Api, Call
from cloud.models.common import Input, Output
from cloud.payments.razorpay import RAZORPAY
from cloud.payments.registry import seal_secret
from cloud.sync.outbox import request_pull
from contracts.numbers import WHOLE_NUMBER
from contracts.sync import MoneyPolicy

api = Api("/api/v1")
TAG = "payments"
_DEFAULT_POLICY = MoneyPolicy()

# Razorpay key ids are rzp_test_... / rzp_live_... followed by letters and digits; the secret
# is letters and digits. The webhook secret is whatever the admin typed into Razorpay's
# dashboard: printable ASCII without spaces.
KeyId = Annotated[str, Field(pattern=r"^rzp_(test|live)_[A-Za-z0-9]{6,40}$", max_length=64)]
KeySecret = Annotated[str, Field(pattern=r"^[A-Za-z0-9]{16,64}$")]
WebhookSecret = Annotated[str, Field(pattern=r"^[!-~]{8,256}$")]


class ProviderSettingsIn(Input):
    provider: Literal["razorpay"]
    key_id: KeyId
    # Required the first time; left out later, the stored one stays (rotate one at a time).
    key_secret: KeySecret | None = None
    webhook_secret: WebhookSecret | None = None
    # False keeps the credentials but stops offering UPI (webhooks are still accepted).
    enabled: StrictBool = True


class BreakerOut(Output):
    state: Literal["closed", "open", "half_open"]
    consecutive_failures: int
    retry_in_s: float
    opened_total: int


class ProviderSettingsOut(Output):
    provider: str | None
    key_id: str | None
    key_secret_set: bool
    webhook_secret_set: bool
    enabled: bool
    # What gateways are told: a provider is configured and enabled.
    upi_enabled: bool
    # Paste into Razorpay's dashboard (Webhooks), with the same webhook secret.
    webhook_url: str
    updated_at: datetime | None
    # This process's circuit breaker for the provider (None until it was first used).
    breaker: BreakerOut | None


class ProviderDeleted(Output):
    provider: str | None
    deleted: bool


class MoneyPolicyIn(Input):
    """Fields left out keep their current value."""

    unknown_outcome: Literal["refund", "review"] | None = None
    disable_slot_after_failures: Annotated[StrictInt, Field(ge=1, le=100), WHOLE_NUMBER] | None = (
        None
    )


class MoneyPolicyOut(Output):
    unknown_outcome: Literal["refund", "review"]
    disable_slot_after_failures: int
    upi_enabled: bool
    updated_at: datetime | None


def webhook_url(call: Call) -> str:
    base = call.ctx.settings.public_url or str(call.request.url.origin())
    return f"{base}/api/v1/webhooks/{RAZORPAY}/{call.principal.tenant_id}"


async def _audit(
    conn: AsyncConnection, call: Call, action: str, target_type: str, note: str
) -> None:
    await conn.execute(
        t.operator_audit.insert().values(
            id=str(uuid.uuid4()),
            tenant_id=call.principal.tenant_id,
            user_id=call.principal.user_id,
            action=action,
            target_type=target_type,
            target_id=call.principal.tenant_id,
            note=note[:1000],
            created_at=utcnow(),
        )
    )


async def bump_tenant_machines(conn: AsyncConnection, tenant_id: str) -> list[str]:
    """A new version for each of the tenant's machines and ``state.changed`` for their sites'
    gateways; returns the gateway ids to wake once committed."""
    rows = (
        await conn.execute(
            sa.select(t.machines.c.id, t.machines.c.site_id)
            .where(t.machines.c.tenant_id == tenant_id)
            .order_by(t.machines.c.id)
        )
    ).all()
    now = utcnow()
    for row in rows:
        await conn.execute(
            t.machines.update()
            .where(t.machines.c.id == row.id)
            .values(version=await next_version(conn), updated_at=now)
        )
    woken: list[str] = []
    for site_id in sorted({r.site_id for r in rows}):
        woken.extend(await request_pull(conn, site_id))
    return woken


async def _provider_out(call: Call, conn: AsyncConnection) -> ProviderSettingsOut:
    tenant_id = call.principal.tenant_id
    row = (
        await conn.execute(
            sa.select(t.payment_providers).where(t.payment_providers.c.tenant_id == tenant_id)
        )
    ).first()
    snapshot = call.ctx.providers.breakers().get(tenant_id)
    breaker = (
        BreakerOut.model_validate({k: snapshot[k] for k in BreakerOut.model_fields})
        if snapshot
        else None
    )
    if row is None:
        return ProviderSettingsOut(
            provider=None,
            key_id=None,
            key_secret_set=False,
            webhook_secret_set=False,
            enabled=False,
            upi_enabled=False,
            webhook_url=webhook_url(call),
            updated_at=None,
            breaker=breaker,
        )
    return ProviderSettingsOut(
        provider=row.provider,
        key_id=row.key_id,
        key_secret_set=bool(row.key_secret),
        webhook_secret_set=bool(row.webhook_secret),
        enabled=row.enabled,
        upi_enabled=row.enabled,
        webhook_url=webhook_url(call),
        updated_at=as_utc(row.updated_at),
        breaker=breaker,
    )


@api.route(
    "GET",
    "/payments/provider",
    summary="The tenant's payment provider (secrets are never returned)",
    tag=TAG,
    response=ProviderSettingsOut,
    permission=Permission.PAYMENTS_SETTINGS,
    errors=(),
)
async def get_provider(call: Call) -> ProviderSettingsOut:
    async with call.ctx.engine.connect() as conn:
        return await _provider_out(call, conn)


@api.route(
    "PUT",
    "/payments/provider",
    summary="Set the tenant's payment provider credentials (secrets write-only, sealed at rest)",
    tag=TAG,
    body=ProviderSettingsIn,
    response=ProviderSettingsOut,
    permission=Permission.PAYMENTS_SETTINGS,
    errors=(),
)
async def put_provider(call: Call) -> ProviderSettingsOut:
    body = call.body(ProviderSettingsIn)
    tenant_id = call.principal.tenant_id
    now = utcnow()
    async with call.ctx.engine.begin() as conn:
        current = (
            await conn.execute(
                sa.select(t.payment_providers)
                .where(t.payment_providers.c.tenant_id == tenant_id)
                .with_for_update()
            )
        ).first()
        if current is None and (body.key_secret is None or body.webhook_secret is None):
            raise ValidationFailed(
                "key_secret and webhook_secret are required when setting up a provider",
                details=[
                    {"loc": [name], "msg": "required the first time", "type": "missing"}
                    for name in ("key_secret", "webhook_secret")
                    if getattr(body, name) is None
                ],
            )
        values: dict[str, object] = {
            "provider": body.provider,
            "key_id": body.key_id,
            "enabled": body.enabled,
            "updated_at": now,
            "updated_by": call.principal.user_id,
        }
        replaced = []
        if body.key_secret is not None:
            values["key_secret"] = seal_secret(conn, tenant_id, "key_secret", body.key_secret)
            replaced.append("key_secret")
        if body.webhook_secret is not None:
            values["webhook_secret"] = seal_secret(
                conn, tenant_id, "webhook_secret", body.webhook_secret
            )
            replaced.append("webhook_secret")
        if current is None:
            await conn.execute(
                t.payment_providers.insert().values(tenant_id=tenant_id, created_at=now, **values)
            )
            action = "payment_provider.create"
        else:
            await conn.execute(
                t.payment_providers.update()
                .where(t.payment_providers.c.tenant_id == tenant_id)
                .values(**values)
            )
            action = "payment_provider.update"
        # Names what changed, never a secret.
        note = (
            f"{body.provider} key {body.key_id}, "
            f"{'enabled' if body.enabled else 'disabled'}; "
            f"replaced: {', '.join(replaced) or 'no secrets'}"
        )
        await _audit(conn, call, action, "payment_provider", note)
        woken = await bump_tenant_machines(conn, tenant_id)
        out = await _provider_out(call, conn)
    call.ctx.providers.invalidate(tenant_id)
    call.ctx.hub.wake(woken)
    return out


@api.route(
    "DELETE",
    "/payments/provider",
    summary="Remove the tenant's payment provider (UPI stops being offered)",
    tag=TAG,
    response=ProviderDeleted,
    permission=Permission.PAYMENTS_SETTINGS,
    errors=(),
)
async def delete_provider(call: Call) -> ProviderDeleted:
    tenant_id = call.principal.tenant_id
    async with call.ctx.engine.begin() as conn:
        provider = await conn.scalar(
            t.payment_providers.delete()
            .where(t.payment_providers.c.tenant_id == tenant_id)
            .returning(t.payment_providers.c.provider)
        )
        woken: list[str] = []
        if provider is not None:
            await _audit(
                conn, call, "payment_provider.delete", "payment_provider", f"{provider} removed"
            )
            woken = await bump_tenant_machines(conn, tenant_id)
    call.ctx.providers.invalidate(tenant_id)
    call.ctx.hub.wake(woken)
    return ProviderDeleted(provider=provider, deleted=provider is not None)


async def money_policy(conn: AsyncConnection, tenant_id: str) -> MoneyPolicy:
    """The tenant's ``MoneyPolicy`` as gateways get it (defaults when never set)."""
    row = (
        await conn.execute(
            sa.select(t.tenant_money_policies).where(
                t.tenant_money_policies.c.tenant_id == tenant_id
            )
        )
    ).first()
    upi = await conn.scalar(
        sa.select(t.payment_providers.c.enabled).where(t.payment_providers.c.tenant_id == tenant_id)
    )
    if row is None:
        return _DEFAULT_POLICY.model_copy(update={"upi_enabled": bool(upi)})
    return MoneyPolicy(
        unknown_outcome=row.unknown_outcome,
        disable_slot_after_failures=row.disable_slot_after_failures,
        upi_enabled=bool(upi),
    )


async def _policy_out(conn: AsyncConnection, tenant_id: str) -> MoneyPolicyOut:
    policy = await money_policy(conn, tenant_id)
    updated_at = await conn.scalar(
        sa.select(t.tenant_money_policies.c.updated_at).where(
            t.tenant_money_policies.c.tenant_id == tenant_id
        )
    )
    return MoneyPolicyOut(
        unknown_outcome=policy.unknown_outcome,
        disable_slot_after_failures=policy.disable_slot_after_failures,
        upi_enabled=policy.upi_enabled,
        updated_at=as_utc(updated_at) if updated_at is not None else None,
    )


@api.route(
    "GET",
    "/payments/policy",
    summary="The tenant's money policy (unknown dispense outcomes, slot disabling)",
    tag=TAG,
    response=MoneyPolicyOut,
    permission=Permission.PAYMENTS_SETTINGS,
    errors=(),
)
async def get_policy(call: Call) -> MoneyPolicyOut:
    async with call.ctx.engine.connect() as conn:
        return await _policy_out(conn, call.principal.tenant_id)


@api.route(
    "PUT",
    "/payments/policy",
    summary="Change the tenant's money policy (gateways pull it at once)",
    tag=TAG,
    body=MoneyPolicyIn,
    response=MoneyPolicyOut,
    permission=Permission.PAYMENTS_SETTINGS,
    errors=(),
)
async def put_policy(call: Call) -> MoneyPolicyOut:
    body = call.body(MoneyPolicyIn)
    tenant_id = call.principal.tenant_id
    async with call.ctx.engine.begin() as conn:
        # The tenant row first, as user changes do: two admins' changes are serialized.
        await conn.execute(
            sa.select(t.tenants.c.id).where(t.tenants.c.id == tenant_id).with_for_update()
        )
        current = await money_policy(conn, tenant_id)
        unknown = body.unknown_outcome or current.unknown_outcome
        failures = body.disable_slot_after_failures or current.disable_slot_after_failures
        exists = await conn.scalar(
            sa.select(t.tenant_money_policies.c.tenant_id).where(
                t.tenant_money_policies.c.tenant_id == tenant_id
            )
        )
        values = {
            "unknown_outcome": unknown,
            "disable_slot_after_failures": failures,
            "updated_at": utcnow(),
        }
        if exists is None:
            await conn.execute(
                t.tenant_money_policies.insert().values(tenant_id=tenant_id, **values)
            )
        else:
            await conn.execute(
                t.tenant_money_policies.update()
                .where(t.tenant_money_policies.c.tenant_id == tenant_id)
                .values(**values)
            )
        await _audit(
            conn,
            call,
            "money_policy.update",
            "money_policy",
            f"unknown_outcome={unknown}, disable_slot_after_failures={failures} (was "
            f"{current.unknown_outcome}, {current.disable_slot_after_failures})",
        )
        woken = await bump_tenant_machines(conn, tenant_id)
        out = await _policy_out(conn, tenant_id)
    call.ctx.hub.wake(woken)
    return out
