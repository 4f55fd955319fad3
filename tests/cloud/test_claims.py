"""Claim codes: an encrypted bundle parked under a code's hash, handed out exactly once."""

import asyncio
import base64
import hashlib
import secrets

import sqlalchemy as sa

from cloud.db import schema as t


def _claim_body(**overrides):
    body = {
        "ciphertext": base64.b64encode(secrets.token_bytes(200)).decode(),
        "nonce": base64.b64encode(secrets.token_bytes(12)).decode(),
        "code_hash": hashlib.sha256(secrets.token_hex(8).encode()).hexdigest(),
        "ttl_s": 900,
    }
    return body | overrides


async def _machine(tenant):
    site = await tenant.site()
    return (await tenant.machine(site["id"]))["machine"]


async def test_claim_redeems_once(tenant, api, cloud):
    machine = await _machine(tenant)
    body = _claim_body()
    created = await tenant.admin.call("POST", f"/api/v1/machines/{machine['id']}/claims", body)
    assert created.status == 201, created.body
    assert created.data["machine_id"] == machine["id"]
    assert "ciphertext" not in created.data and "code_hash" not in created.data

    first = await api.call("POST", "/api/v1/claims/redeem", {"code_hash": body["code_hash"]})
    assert first.status == 200, first.body
    assert first.data["machine_id"] == machine["id"]
    assert first.data["ciphertext"] == body["ciphertext"]
    assert first.data["nonce"] == body["nonce"]
    assert first.data["expires_at"] == created.data["expires_at"]

    again = await api.call("POST", "/api/v1/claims/redeem", {"code_hash": body["code_hash"]})
    assert again.status == 410, again.body
    assert again.error["code"] == "gone"

    unknown = await api.call(
        "POST", "/api/v1/claims/redeem", {"code_hash": hashlib.sha256(b"nope").hexdigest()}
    )
    assert unknown.status == 404
    assert unknown.error["code"] == "not_found"

    # Nothing worth stealing stays behind once redeemed.
    async with cloud.engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(t.machine_claims).where(t.machine_claims.c.code_hash == body["code_hash"])
            )
        ).one()
    assert row.ciphertext is None and row.redeemed_at is not None


async def test_expired_claim_is_gone(tenant, api, cloud):
    machine = await _machine(tenant)
    body = _claim_body(ttl_s=60)
    created = await tenant.admin.call("POST", f"/api/v1/machines/{machine['id']}/claims", body)
    assert created.status == 201, created.body
    # The claim's own creation time is in the past by the time it is redeemed.
    async with cloud.engine.begin() as conn:
        await conn.execute(
            t.machine_claims.update()
            .where(t.machine_claims.c.code_hash == body["code_hash"])
            .values(expires_at=t.machine_claims.c.created_at)
        )
    reply = await api.call("POST", "/api/v1/claims/redeem", {"code_hash": body["code_hash"]})
    assert reply.status == 410, reply.body
    assert "expired" in reply.error["message"]

    # The next claim made anywhere drops expired ciphertexts; the row still answers 410.
    path = f"/api/v1/machines/{machine['id']}/claims"
    assert (await tenant.admin.call("POST", path, _claim_body())).status == 201
    async with cloud.engine.connect() as conn:
        left = await conn.scalar(
            sa.select(t.machine_claims.c.ciphertext).where(
                t.machine_claims.c.code_hash == body["code_hash"]
            )
        )
    assert left is None
    reply = await api.call("POST", "/api/v1/claims/redeem", {"code_hash": body["code_hash"]})
    assert reply.status == 410, reply.body


async def test_concurrent_redeems_have_one_winner(tenant, api):
    machine = await _machine(tenant)
    body = _claim_body()
    created = await tenant.admin.call("POST", f"/api/v1/machines/{machine['id']}/claims", body)
    assert created.status == 201, created.body
    replies = await asyncio.gather(
        *[
            api.call("POST", "/api/v1/claims/redeem", {"code_hash": body["code_hash"]})
            for _ in range(6)
        ]
    )
    assert sorted(r.status for r in replies) == [200] + [410] * 5


async def test_claims_are_tenant_scoped_and_need_write(make_tenant, api):
    a, b = await make_tenant(), await make_tenant()
    machine_b = await _machine(b)
    path = f"/api/v1/machines/{machine_b['id']}/claims"
    foreign = await a.admin.call("POST", path, _claim_body())
    assert foreign.status == 404, foreign.body
    assert foreign.error["code"] == "not_found"

    viewer = await b.user("viewer")
    denied = await viewer.call("POST", path, _claim_body())
    assert denied.status == 403, denied.body

    operator = await b.user("operator")
    allowed = await operator.call("POST", path, _claim_body())
    assert allowed.status == 201, allowed.body

    anonymous = await api.call("POST", path, _claim_body())
    assert anonymous.status == 401


async def test_claim_bad_input(tenant, api):
    machine = await _machine(tenant)
    path = f"/api/v1/machines/{machine['id']}/claims"
    for bad in (
        _claim_body(code_hash="ABC"),
        _claim_body(code_hash="G" * 64),
        _claim_body(ttl_s=3601),
        _claim_body(ttl_s=900.5),  # 900.0 is the integer 900 (contracts.numbers)
        _claim_body(ttl_s="900"),
        _claim_body(ttl_s=10),
        _claim_body(nonce="not base64!!"),
        _claim_body(ciphertext=""),
        _claim_body(extra="field"),
    ):
        reply = await tenant.admin.call("POST", path, bad)
        assert reply.status == 400, (bad, reply.body)
        assert reply.error["code"] == "validation_error"
    malformed = await tenant.admin.call("POST", path, data="{not json")
    assert malformed.status == 400

    body = _claim_body()
    assert (await tenant.admin.call("POST", path, body)).status == 201
    duplicate = await tenant.admin.call("POST", path, body)
    assert duplicate.status == 409, duplicate.body

    for bad in ({}, {"code_hash": "x"}, {"code_hash": body["code_hash"], "more": 1}):
        reply = await api.call("POST", "/api/v1/claims/redeem", bad)
        assert reply.status == 400, (bad, reply.body)

    gone = await tenant.admin.call("DELETE", f"/api/v1/machines/{machine['id']}/decommission")
    assert gone.status == 200
    refused = await tenant.admin.call("POST", path, _claim_body())
    assert refused.status == 409, refused.body
