"""The mTLS sync API a gateway calls: push events, pull state, create payments."""

import logging
import math
import uuid
from datetime import timedelta
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import Field, StrictInt

from cloud.context import CloudContext
from cloud.db import schema as t
from cloud.db import sealed
from cloud.db.machines import catalogs
from cloud.db.times import as_utc, utcnow
from cloud.errors import CloudError, Conflict
from cloud.http.registry import Api, Call, read_json
from cloud.models.common import MAX_SAFE_INT, Input
from cloud.payments.provider import (
    PaymentProvider,
    PaymentRequest,
    ProviderRejected,
    ProviderUnavailable,
)
from cloud.payments.registry import provider_for
from cloud.payments.sandbox import SANDBOX
from cloud.routes.payment_settings import money_policy
from cloud.sync.events import store_batch
from cloud.sync.identity import authenticate_gateway
from contracts.numbers import QUERY_INTEGER
from contracts.sync import (
    SYNC_PREFIX,
    CatalogItemState,
    MachineState,
    PaymentCreate,
    PaymentIntent,
    PushAck,
    PushBatch,
    StateResponse,
)

log = logging.getLogger(__name__)
api = Api(SYNC_PREFIX)
TAG = "sync"
_CATALOG_FIELDS = list(CatalogItemState.model_fields)


class StateQuery(Input):
    # The integer rule of both APIs (contracts.numbers): decimal digits only.
    cursor: Annotated[StrictInt, Field(ge=0, le=MAX_SAFE_INT), QUERY_INTEGER] = 0


@api.route(
    "POST",
    "/events",
    summary="Push outbox events",
    tag=TAG,
    body=PushBatch,
    response=PushAck,
    public=True,
    # Each event is judged on its own (a bad one is dead-lettered, the rest stored), so the
    # body is not refused whole for one event's NUL or contract violation.
    raw_body=True,
)
async def push_events(call: Call) -> PushAck:
    gateway = await authenticate_gateway(call.request, call.ctx)
    body = await read_json(call.request)
    return await store_batch(call.ctx.engine, gateway, body, hub=call.ctx.hub)


@api.route(
    "GET",
    "/state",
    summary="Pull machine state changed since a cursor",
    tag=TAG,
    query=StateQuery,
    response=StateResponse,
    public=True,
)
async def pull_state(call: Call) -> StateResponse:
    gateway = await authenticate_gateway(call.request, call.ctx)
    cursor = call.query(StateQuery).cursor
    async with call.ctx.engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.select(t.machines)
                .where(t.machines.c.site_id == gateway.site_id, t.machines.c.version > cursor)
                .order_by(t.machines.c.version)
            )
        ).all()
        items = await catalogs(conn, [r.id for r in rows])
        # A site belongs to one tenant, but each machine names its own: ask per tenant once.
        sandbox = {"sandbox_enabled": call.ctx.settings.sandbox_payments}
        policies = {
            tenant_id: (await money_policy(conn, tenant_id)).model_copy(update=sandbox)
            for tenant_id in sorted({r.tenant_id for r in rows})
        }
    machines = [
        MachineState(
            id=r.id,
            tenant_id=r.tenant_id,
            site_id=r.site_id,
            name=r.name,
            location=r.location,
            status=r.status,
            mqtt_secret_hash=r.mqtt_secret_hash,
            command_key=sealed.open_command_key(call.ctx.engine, r.id, r.command_key),
            currency=r.currency,
            config=r.config or {},
            money_policy=policies[r.tenant_id],
            catalog=[
                CatalogItemState.model_validate({k: i[k] for k in _CATALOG_FIELDS})
                for i in items.get(r.id, [])
            ],
            version=r.version,
        )
        for r in rows
    ]
    return StateResponse(cursor=max([cursor, *(m.version for m in machines)]), machines=machines)


def _intent(row: Any, image_url: str | None = None) -> PaymentIntent:
    return PaymentIntent(
        payment_id=row.id,
        order_id=row.order_id,
        provider=row.provider,
        status=row.status,
        amount=row.amount,
        currency=row.currency,
        qr_payload=row.qr_payload,
        expires_at=as_utc(row.expires_at) if row.expires_at is not None else None,
        provider_ref=row.provider_ref,
        image_url=image_url,
    )


async def _replayed_intent(ctx: CloudContext, row: Any) -> PaymentIntent:
    """A replay's answer. The QR image's address is not stored, so it is asked of the provider
    again (replays are rare: a lost answer). Without an answer, a code with a UPI URI is still
    shown from it; one without is a 503 the gateway retries."""
    if row.provider == SANDBOX or row.provider_ref is None or row.status != "created":
        return _intent(row)
    try:
        provider = await provider_for(ctx, row.tenant_id, "upi")
        return _intent(row, (await provider.lookup(row.provider_ref)).image_url)
    except CloudError:
        if row.qr_payload is None:
            raise
        return _intent(row)


@api.route(
    "POST",
    "/payments",
    summary="Create a payment (idempotent)",
    tag=TAG,
    body=PaymentCreate,
    response=PaymentIntent,
    status=201,
    public=True,
    # 409: another payment's key, a machine elsewhere, no provider for the method;
    # 502 provider_rejected; 503 provider_unavailable (down, or its breaker open: at once).
    errors=(409, 502, 503),
)
async def create_payment(call: Call) -> PaymentIntent:
    gateway = await authenticate_gateway(call.request, call.ctx)
    body = call.body(PaymentCreate)
    engine = call.ctx.engine

    async def existing() -> Any:
        async with engine.connect() as conn:
            return (
                await conn.execute(
                    sa.select(t.payments).where(
                        t.payments.c.idempotency_key == body.idempotency_key
                    )
                )
            ).first()

    async def same_request(row: Any) -> PaymentIntent:
        if (row.gateway_id, row.order_id, row.amount, row.currency, _method_of(row.provider)) != (
            gateway.id,
            body.order_id,
            body.amount,
            body.currency,
            body.method,
        ):
            raise Conflict("idempotency key reused for a different payment")
        return await _replayed_intent(call.ctx, row)

    if (row := await existing()) is not None:
        return await same_request(row)
    async with engine.connect() as conn:
        machine = (
            await conn.execute(
                sa.select(t.machines.c.id, t.machines.c.status).where(
                    t.machines.c.id == body.machine_id, t.machines.c.site_id == gateway.site_id
                )
            )
        ).first()
    if machine is None:
        raise Conflict("the machine is not at this gateway's site")
    if machine.status != "active":
        raise Conflict("the machine is decommissioned")
    # Raises ProviderNotConfigured (409) for "upi" when the tenant has no provider.
    provider = await provider_for(call.ctx, gateway.tenant_id, body.method)
    payment_id = str(uuid.uuid4())
    now = utcnow()
    # The QR code closes when the gateway gives up on the order (never later than the cloud's
    # own limit); the provider adds its minimum (Razorpay: 2 minutes ahead).
    expiry_s = min(call.ctx.settings.payment_expiry_s, body.pay_within_s or math.inf)
    expires_at = now + timedelta(seconds=expiry_s)
    # ProviderUnavailable (503, at once while the tenant's breaker is open) and
    # ProviderRejected (502) reach the gateway as they are: no payment row, nothing charged.
    request = PaymentRequest(
        payment_id, body.order_id, body.machine_id, body.amount, body.currency, expires_at
    )
    try:
        created = await provider.create(request)
    except ProviderUnavailable as exc:
        raise ProviderUnavailable(
            f"{exc.message}; no payment was opened and nothing was charged",
            retry_after_s=exc.retry_after_s,
        ) from exc
    except ProviderRejected as exc:
        raise ProviderRejected(
            f"{exc.message}; no payment was opened and nothing was charged",
            http_status=exc.http_status,
            error_code=exc.error_code,
        ) from exc
    try:
        async with engine.begin() as conn:
            await conn.execute(
                t.payments.insert().values(
                    id=payment_id,
                    tenant_id=gateway.tenant_id,
                    site_id=gateway.site_id,
                    machine_id=body.machine_id,
                    gateway_id=gateway.id,
                    order_id=body.order_id,
                    provider=provider.name,
                    provider_ref=created.provider_ref,
                    status="created",
                    amount=body.amount,
                    currency=body.currency,
                    idempotency_key=body.idempotency_key,
                    qr_payload=created.qr_payload,
                    approve_at=created.approve_at,
                    expires_at=created.expires_at,
                    created_at=now,
                    updated_at=now,
                )
            )
            row = (
                await conn.execute(sa.select(t.payments).where(t.payments.c.id == payment_id))
            ).one()
    except sa.exc.IntegrityError:
        # The same key raced in from a retry; answer with the winner, and close the QR code
        # this request opened: it was never shown to anyone.
        if (row := await existing()) is None:
            raise
        if created.provider_ref is not None and created.provider_ref != row.provider_ref:
            await _close_unshown(provider, created.provider_ref)
        return await same_request(row)
    call.ctx.hub.wake_workers()
    return _intent(row, created.image_url)


def _method_of(provider: str) -> str:
    return "sandbox" if provider == SANDBOX else "upi"


async def _close_unshown(provider: PaymentProvider, provider_ref: str) -> None:
    try:
        await provider.close(provider_ref)
    except CloudError as exc:
        log.warning(
            "QR code %s of a lost race not closed (%s); closes at close_by", provider_ref, exc
        )
