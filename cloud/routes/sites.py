"""Sites of the caller's tenant and their one-time gateway enrolment tokens."""

import uuid
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.auth.permissions import Permission
from cloud.auth.tokens import new_opaque_token, token_digest
from cloud.db import schema as t
from cloud.db.rows import row_dict
from cloud.db.times import utcnow
from cloud.errors import Conflict, NotFound
from cloud.http.registry import Api, Call
from cloud.models.sites import EnrollmentTokenOut, SiteCreate, SiteOut

api = Api("/api/v1")
TAG = "sites"


async def get_site(conn: AsyncConnection, tenant_id: str, site_id: str) -> sa.Row:
    row = (
        await conn.execute(
            sa.select(t.sites).where(t.sites.c.id == site_id, t.sites.c.tenant_id == tenant_id)
        )
    ).first()
    if row is None:
        raise NotFound(f"site {site_id} not found")
    return row


@api.route(
    "POST",
    "/sites",
    summary="Create a site",
    tag=TAG,
    body=SiteCreate,
    response=SiteOut,
    status=201,
    permission=Permission.SITES_WRITE,
    errors=(409,),
)
async def create_site(call: Call) -> SiteOut:
    body = call.body(SiteCreate)
    site_id = str(uuid.uuid4())
    tenant_id = call.principal.tenant_id
    async with call.ctx.engine.begin() as conn:
        taken = await conn.scalar(
            sa.select(t.sites.c.id).where(
                t.sites.c.tenant_id == tenant_id, t.sites.c.name == body.name
            )
        )
        if taken is not None:
            raise Conflict("a site with this name already exists")
        await conn.execute(
            t.sites.insert().values(
                id=site_id,
                tenant_id=tenant_id,
                name=body.name,
                address=body.address,
                created_at=utcnow(),
            )
        )
        return SiteOut.model_validate(row_dict(await get_site(conn, tenant_id, site_id)))


@api.route(
    "GET",
    "/sites",
    summary="Sites of the caller's tenant",
    tag=TAG,
    response=SiteOut,
    many=True,
    permission=Permission.SITES_READ,
    errors=(),
)
async def list_sites(call: Call) -> list[SiteOut]:
    async with call.ctx.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(t.sites)
            .where(t.sites.c.tenant_id == call.principal.tenant_id)
            .order_by(t.sites.c.created_at)
        )
        return [SiteOut.model_validate(row_dict(r)) for r in rows]


@api.route(
    "GET",
    "/sites/{site_id}",
    summary="One site",
    tag=TAG,
    response=SiteOut,
    permission=Permission.SITES_READ,
    errors=(),
)
async def get_one_site(call: Call) -> SiteOut:
    async with call.ctx.engine.connect() as conn:
        row = await get_site(conn, call.principal.tenant_id, call.path("site_id"))
    return SiteOut.model_validate(row_dict(row))


@api.route(
    "POST",
    "/sites/{site_id}/enrollment-tokens",
    summary="A one-time gateway enrolment token (shown once)",
    tag=TAG,
    response=EnrollmentTokenOut,
    status=201,
    permission=Permission.GATEWAYS_ENROLL,
    errors=(),
)
async def create_enrollment_token(call: Call) -> EnrollmentTokenOut:
    tenant_id = call.principal.tenant_id
    token = new_opaque_token()
    expires_at = utcnow() + timedelta(seconds=call.ctx.settings.enrollment_token_ttl_s)
    async with call.ctx.engine.begin() as conn:
        site = await get_site(conn, tenant_id, call.path("site_id"))
        await conn.execute(
            t.enrollment_tokens.insert().values(
                id=str(uuid.uuid4()),
                tenant_id=tenant_id,
                site_id=site.id,
                token_hash=token_digest(token),
                expires_at=expires_at,
                created_by=call.principal.user_id,
                created_at=utcnow(),
            )
        )
    return EnrollmentTokenOut(token=token, site_id=site.id, expires_at=expires_at)
