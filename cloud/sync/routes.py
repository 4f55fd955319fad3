"""The mTLS sync API a gateway calls: push events, pull state, create payments."""

import uuid
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import Field, StrictInt

from cloud.db import schema as t
from cloud.db import sealed
from cloud.db.machines import catalogs
from cloud.db.times import as_utc, utcnow
from cloud.errors import Conflict
from cloud.http.registry import Api, Call, read_json
from cloud.models.common import MAX_SAFE_INT, Input
from cloud.payments.provider import PaymentRequest
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
    return await store_batch(call.ctx.engine, gateway, await read_json(call.request))


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
            catalog=[
                CatalogItemState.model_validate({k: i[k] for k in _CATALOG_FIELDS})
                for i in items.get(r.id, [])
            ],
            version=r.version,
        )
        for r in rows
    ]
    return StateResponse(cursor=max([cursor, *(m.version for m in machines)]), machines=machines)


def _intent(row: Any) -> PaymentIntent:
    return PaymentIntent(
        payment_id=row.id,
        order_id=row.order_id,
        provider=row.provider,
        status=row.status,
        amount=row.amount,
        currency=row.currency,
        qr_payload=row.qr_payload,
        expires_at=as_utc(row.expires_at) if row.expires_at is not None else None,
    )


@api.route(
    "POST",
    "/payments",
    summary="Create a payment (idempotent)",
    tag=TAG,
    body=PaymentCreate,
    response=PaymentIntent,
    status=201,
    public=True,
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

    def same_request(row: Any) -> PaymentIntent:
        if (row.gateway_id, row.order_id, row.amount, row.currency) != (
            gateway.id,
            body.order_id,
            body.amount,
            body.currency,
        ):
            raise Conflict("idempotency key reused for a different payment")
        return _intent(row)

    if (row := await existing()) is not None:
        return same_request(row)
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
    provider = call.ctx.payments
    payment_id = str(uuid.uuid4())
    created = await provider.create(
        PaymentRequest(payment_id, body.order_id, body.amount, body.currency)
    )
    now = utcnow()
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
        # The same key raced in from a retry; answer with the winner.
        if (row := await existing()) is None:
            raise
        return same_request(row)
    call.ctx.hub.wake_workers()
    return _intent(row)
