"""Gateway enrolment (public; the one-time token is the credential), the gateway list and
revocation."""

import uuid

import sqlalchemy as sa

from cloud.auth.permissions import Permission
from cloud.auth.tokens import token_digest
from cloud.db import schema as t
from cloud.db.rows import row_dict
from cloud.db.times import as_utc, utcnow
from cloud.errors import Conflict, NotFound, Unauthorized
from cloud.http.registry import Api, Call
from cloud.models.sites import GatewayOut
from contracts.sync import EnrollRequest, EnrollResponse

api = Api("/api/v1")
TAG = "gateways"


@api.route(
    "POST",
    "/gateways/enroll",
    summary="Enrol a gateway: sign its CSR",
    tag=TAG,
    body=EnrollRequest,
    response=EnrollResponse,
    status=201,
    public=True,
    errors=(401, 409),
)
async def enroll(call: Call) -> EnrollResponse:
    body = call.body(EnrollRequest)
    digest = token_digest(body.token)
    gateway_id = str(uuid.uuid4())
    settings = call.ctx.settings
    async with call.ctx.engine.begin() as conn:
        token = (
            await conn.execute(
                sa.select(t.enrollment_tokens).where(t.enrollment_tokens.c.token_hash == digest)
            )
        ).first()
        if token is None:
            raise Unauthorized("unknown enrolment token")
        if token.used_at is not None:
            raise Conflict("enrolment token already used")
        if as_utc(token.expires_at) <= utcnow():
            raise Unauthorized("enrolment token expired")
        issued = call.ctx.ca.sign_gateway_csr(
            body.csr_pem, gateway_id, settings.gateway_cert_ttl_days
        )
        claimed = await conn.execute(
            t.enrollment_tokens.update()
            .where(t.enrollment_tokens.c.id == token.id, t.enrollment_tokens.c.used_at.is_(None))
            .values(used_at=utcnow(), gateway_id=gateway_id)
        )
        if claimed.rowcount != 1:
            raise Conflict("enrolment token already used")
        await conn.execute(
            t.gateways.insert().values(
                id=gateway_id,
                tenant_id=token.tenant_id,
                site_id=token.site_id,
                name=body.name,
                cert_serial=issued.serial,
                cert_not_after=issued.not_after,
                status="active",
                created_at=utcnow(),
            )
        )
        await conn.execute(
            t.gateway_sync_state.insert().values(
                gateway_id=gateway_id, ack_seq=0, updated_at=utcnow()
            )
        )
    return EnrollResponse(
        gateway_id=gateway_id,
        site_id=token.site_id,
        tenant_id=token.tenant_id,
        certificate_pem=issued.pem,
        ca_pem=call.ctx.ca.cert_pem,
        sync_url=call.ctx.sync_url,
    )


@api.route(
    "GET",
    "/gateways",
    summary="Gateways of the caller's tenant",
    tag=TAG,
    response=GatewayOut,
    many=True,
    permission=Permission.GATEWAYS_READ,
    errors=(),
)
async def list_gateways(call: Call) -> list[GatewayOut]:
    async with call.ctx.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(*[t.gateways.c[n] for n in GatewayOut.model_fields])
            .where(t.gateways.c.tenant_id == call.principal.tenant_id)
            .order_by(t.gateways.c.created_at)
        )
        return [GatewayOut.model_validate(row_dict(r)) for r in rows]


@api.route(
    "POST",
    "/gateways/{id}/revoke",
    summary="Revoke a gateway: its certificate is refused and its channel closed",
    tag=TAG,
    response=GatewayOut,
    permission=Permission.GATEWAYS_REVOKE,
    errors=(),
)
async def revoke_gateway(call: Call) -> GatewayOut:
    gateway_id = call.path("id")
    tenant_id = call.principal.tenant_id
    async with call.ctx.engine.begin() as conn:
        updated = await conn.execute(
            t.gateways.update()
            .where(t.gateways.c.id == gateway_id, t.gateways.c.tenant_id == tenant_id)
            .values(status="revoked")
        )
        if updated.rowcount != 1:
            raise NotFound("no such gateway")
        row = (
            await conn.execute(
                sa.select(*[t.gateways.c[n] for n in GatewayOut.model_fields]).where(
                    t.gateways.c.id == gateway_id
                )
            )
        ).one()
    # The channel sender re-checks the status on wake-up; other processes see it on their poll.
    call.ctx.hub.wake([gateway_id])
    return GatewayOut.model_validate(row_dict(row))
