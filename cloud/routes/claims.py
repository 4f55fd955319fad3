"""Claim codes: an operator's tool parks an encrypted device bundle; anyone holding the code
(a second technician, a phone) redeems it exactly once before it expires."""

import uuid
from datetime import timedelta

import sqlalchemy as sa

from cloud.auth.permissions import Permission
from cloud.db import schema as t
from cloud.db.machines import get_machine
from cloud.db.times import as_utc, utcnow
from cloud.errors import Conflict, Gone, NotFound
from cloud.http.registry import Api, Call
from cloud.models.claims import ClaimBundle, ClaimCreate, ClaimOut, ClaimRedeem

api = Api("/api/v1")
TAG = "claims"


@api.route(
    "POST",
    "/machines/{machine_id}/claims",
    summary="Park an encrypted device bundle under a one-time claim code's hash",
    tag=TAG,
    body=ClaimCreate,
    response=ClaimOut,
    status=201,
    permission=Permission.MACHINES_WRITE,
    errors=(409,),
)
async def create_claim(call: Call) -> ClaimOut:
    body = call.body(ClaimCreate)
    principal = call.principal
    now = utcnow()
    claim_id = str(uuid.uuid4())
    expires_at = now + timedelta(seconds=body.ttl_s)
    async with call.ctx.engine.begin() as conn:
        machine = await get_machine(conn, principal.tenant_id, call.path("machine_id"))
        if machine.status != "active":
            raise Conflict("machine is decommissioned")
        taken = await conn.scalar(
            sa.select(t.machine_claims.c.id).where(t.machine_claims.c.code_hash == body.code_hash)
        )
        if taken is not None:
            raise Conflict("a claim with this code already exists; generate a new code")
        # Expired claims keep their row (for the 410) but not their ciphertext.
        await conn.execute(
            t.machine_claims.update()
            .where(
                t.machine_claims.c.expires_at < now,
                t.machine_claims.c.ciphertext.is_not(None),
            )
            .values(ciphertext=None)
        )
        await conn.execute(
            t.machine_claims.insert().values(
                id=claim_id,
                tenant_id=principal.tenant_id,
                machine_id=machine.id,
                code_hash=body.code_hash,
                ciphertext=body.ciphertext,
                nonce=body.nonce,
                expires_at=expires_at,
                created_by=principal.user_id,
                created_at=now,
            )
        )
    return ClaimOut(id=claim_id, machine_id=machine.id, expires_at=expires_at, created_at=now)


@api.route(
    "POST",
    "/claims/redeem",
    summary="Exchange a claim code's hash for the encrypted bundle, once",
    tag=TAG,
    body=ClaimRedeem,
    response=ClaimBundle,
    public=True,
    errors=(404, 410),
)
async def redeem_claim(call: Call) -> ClaimBundle:
    body = call.body(ClaimRedeem)
    now = utcnow()
    async with call.ctx.engine.begin() as conn:
        claim = (
            await conn.execute(
                sa.select(t.machine_claims).where(t.machine_claims.c.code_hash == body.code_hash)
            )
        ).first()
        if claim is None:
            raise NotFound("unknown claim code")
        if claim.redeemed_at is not None:
            raise Gone("claim code already used")
        if as_utc(claim.expires_at) <= now or claim.ciphertext is None:
            raise Gone("claim code expired")
        # The guarded update makes two concurrent redeems end with exactly one winner; the
        # ciphertext is dropped with it, so a used claim holds nothing worth stealing.
        taken = await conn.execute(
            t.machine_claims.update()
            .where(t.machine_claims.c.id == claim.id, t.machine_claims.c.redeemed_at.is_(None))
            .values(redeemed_at=now, ciphertext=None)
        )
        if taken.rowcount != 1:
            raise Gone("claim code already used")
    return ClaimBundle(
        machine_id=claim.machine_id,
        ciphertext=claim.ciphertext,
        nonce=claim.nonce,
        expires_at=as_utc(claim.expires_at),
    )
