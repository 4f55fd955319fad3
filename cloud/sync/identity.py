"""Which gateway is calling: the verified client certificate (CN + serial) of the TLS link,
matched to an active gateway row. Nothing in the request body identifies a gateway."""

from dataclasses import dataclass

import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.context import CloudContext
from cloud.db import schema as t
from cloud.db.times import utcnow
from cloud.errors import Unauthorized
from cloud.pki import peer_identity


@dataclass(frozen=True)
class Gateway:
    id: str
    tenant_id: str
    site_id: str


async def authenticate_gateway(request: web.Request, ctx: CloudContext) -> Gateway:
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    identity = peer_identity(der) if der else None
    if identity is None:
        raise Unauthorized("a client certificate is required")
    async with ctx.engine.begin() as conn:
        row = (
            await conn.execute(
                sa.select(t.gateways.c.id, t.gateways.c.tenant_id, t.gateways.c.site_id).where(
                    t.gateways.c.id == identity.common_name,
                    t.gateways.c.cert_serial == identity.serial,
                    t.gateways.c.status == "active",
                )
            )
        ).first()
        if row is None:
            raise Unauthorized("unknown or revoked gateway certificate")
        await conn.execute(
            t.gateways.update().where(t.gateways.c.id == row.id).values(last_seen_at=utcnow())
        )
    return Gateway(id=row.id, tenant_id=row.tenant_id, site_id=row.site_id)


async def gateway_active(conn: AsyncConnection, gateway_id: str) -> bool:
    status = await conn.scalar(sa.select(t.gateways.c.status).where(t.gateways.c.id == gateway_id))
    return bool(status == "active")
