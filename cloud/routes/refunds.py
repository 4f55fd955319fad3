"""Operators' refunds: list and read them, retry one, or resolve one by hand (audit-logged).
Tenant-scoped: another tenant's refund is a 404."""

import sqlalchemy as sa

from cloud.auth.permissions import Permission
from cloud.db import schema as t
from cloud.db.rows import row_dict
from cloud.errors import NotFound
from cloud.http.registry import Api, Call
from cloud.models.refunds import RefundOut, RefundResolve, RefundsQuery
from cloud.payments.refunds import operator_resolve, operator_retry

api = Api("/api/v1")
TAG = "refunds"
_COLUMNS = [t.refunds.c[name] for name in RefundOut.model_fields]


@api.route(
    "GET",
    "/refunds",
    summary="Refunds of the caller's tenant, newest first",
    tag=TAG,
    query=RefundsQuery,
    response=RefundOut,
    many=True,
    permission=Permission.PAYMENTS_READ,
    errors=(),
)
async def list_refunds(call: Call) -> list[RefundOut]:
    q = call.query(RefundsQuery)
    query = sa.select(*_COLUMNS).where(t.refunds.c.tenant_id == call.principal.tenant_id)
    if q.order_id is not None:
        query = query.where(t.refunds.c.order_id == q.order_id)
    if q.status is not None:
        query = query.where(t.refunds.c.status == q.status.value)
    query = (
        query.order_by(t.refunds.c.created_at.desc(), t.refunds.c.id)
        .limit(q.limit)
        .offset(q.offset)
    )
    async with call.ctx.engine.connect() as conn:
        return [RefundOut.model_validate(row_dict(r)) for r in await conn.execute(query)]


@api.route(
    "GET",
    "/refunds/{refund_id}",
    summary="One refund",
    tag=TAG,
    response=RefundOut,
    permission=Permission.PAYMENTS_READ,
    errors=(),
)
async def get_refund(call: Call) -> RefundOut:
    refund_id = call.path("refund_id")
    async with call.ctx.engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(*_COLUMNS).where(
                    t.refunds.c.id == refund_id,
                    t.refunds.c.tenant_id == call.principal.tenant_id,
                )
            )
        ).first()
    if row is None:
        raise NotFound(f"refund {refund_id} not found")
    return RefundOut.model_validate(row_dict(row))


@api.route(
    "POST",
    "/refunds/{refund_id}/retry",
    summary="Send a failed refund, or one waiting for review, again (tries counted from zero)",
    tag=TAG,
    response=RefundOut,
    permission=Permission.REFUNDS_WRITE,
    errors=(409,),
)
async def retry_refund(call: Call) -> RefundOut:
    principal = call.principal
    async with call.ctx.engine.begin() as conn:
        row, woken = await operator_retry(
            conn, principal.tenant_id, principal.user_id, call.path("refund_id")
        )
    call.ctx.hub.wake(woken)
    call.ctx.hub.wake_workers()
    return RefundOut.model_validate(row_dict(row))


@api.route(
    "POST",
    "/refunds/{refund_id}/resolve",
    summary="Settle a refund waiting for review by hand (refunded outside, or not owed)",
    tag=TAG,
    body=RefundResolve,
    response=RefundOut,
    permission=Permission.REFUNDS_WRITE,
    errors=(409,),
)
async def resolve_refund(call: Call) -> RefundOut:
    principal = call.principal
    body = call.body(RefundResolve)
    async with call.ctx.engine.begin() as conn:
        row, woken = await operator_resolve(
            conn,
            principal.tenant_id,
            principal.user_id,
            call.path("refund_id"),
            body.outcome,
            body.note,
        )
    call.ctx.hub.wake(woken)
    return RefundOut.model_validate(row_dict(row))
