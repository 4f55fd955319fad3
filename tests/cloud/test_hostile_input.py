"""Hostile input is a 400 envelope, never a 500: deep nesting, NaN, NUL, huge integers, CSRs on
keys the cloud does not sign."""

import uuid

import aiohttp
import pytest
import sqlalchemy as sa
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from test_sync_push import event, order_payload

from cloud.http.middleware import envelope_middleware

# A CSR on secp112r1 (made once with `openssl ecparam -name secp112r1 -genkey` + `openssl req`);
# cryptography cannot make keys on that curve.
SECP112R1_CSR = """-----BEGIN CERTIFICATE REQUEST-----
MHswRwIBADAMMQowCAYDVQQDDAF4MDIwEAYHKoZIzj0CAQYFK4EEAAYDHgAEwgMI
eAYjjAP+d9+2XABR8wJLjrzQLuvhBovyEaAAMAoGCCqGSM49BAMCAyQAMCECDwCO
uhBLWWkyFX6r495P5gIOMNbMITCVySYlyTqeHgc=
-----END CERTIFICATE REQUEST-----
"""


async def test_deeply_nested_json_is_400(api):
    reply = await api.call("POST", "/api/v1/auth/login", data="[" * 100_000 + "]" * 100_000)
    assert reply.status == 400, reply.body
    assert reply.error["code"] == "validation_error"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
async def test_non_finite_numbers_are_400(tenant, constant):
    site = await tenant.site()
    mid = (await tenant.machine(site["id"]))["machine"]["id"]
    # config is free-form JSON, so only the parser can keep NaN out of it.
    raw = '{"config": {"price_factor": ' + constant + "}}"
    reply = await tenant.admin.call("PUT", f"/api/v1/machines/{mid}/config", data=raw)
    assert reply.status == 400, reply.body
    assert reply.error["code"] == "validation_error"
    stored = await tenant.admin.call("GET", f"/api/v1/machines/{mid}/config")
    assert stored.data["config"] == {}


async def test_nul_characters_are_400(tenant, enroll):
    nul = "a\u0000b"
    created = await tenant.admin.call("POST", "/api/v1/sites", {"name": nul})
    assert created.status == 400, created.body
    site = await tenant.site()
    mid = (await tenant.machine(site["id"]))["machine"]["id"]
    nested = {"config": {"screens": [{"title": nul}], nul: 1}}
    config = await tenant.admin.call("PUT", f"/api/v1/machines/{mid}/config", nested)
    assert config.status == 400, config.body
    login = await tenant.admin.call("POST", "/api/v1/auth/login", {"email": nul, "password": nul})
    assert login.status == 400, login.body
    by_path = await tenant.admin.call("GET", "/api/v1/machines/a%00b")
    assert by_path.status == 400, by_path.body
    by_query = await tenant.admin.call("GET", "/api/v1/orders", params={"machine_id": nul})
    assert by_query.status == 400, by_query.body
    enrolled = await tenant.admin.call(
        "POST", "/api/v1/gateways/enroll", {"token": nul * 10, "csr_pem": "x" * 200}, token=""
    )
    assert enrolled.status == 400, enrolled.body

    gateway = await enroll(site["id"])
    # Inside one event, a NUL rejects that event alone (dead letter, nothing stored) instead of
    # the whole batch; in the envelope (the event id) it is still a 400 for the batch.
    order_id = str(uuid.uuid4())
    payload = order_payload(order_id, mid, version=1) | {"customer_name": nul}
    pushed = await gateway.push([event(1, "order.snapshot", payload)])
    _rejected_alone(pushed)
    assert (await tenant.admin.call("GET", f"/api/v1/orders/{order_id}")).status == 404
    nul_id = await gateway.push(
        [event(1, "order.snapshot", order_payload(str(uuid.uuid4()), mid, version=1), nul * 5)]
    )
    assert nul_id.status == 400, nul_id.body


def _rejected_alone(reply):
    assert reply.status == 200, reply.body
    assert reply.data["accepted"] == 0, reply.body
    assert [r["code"] for r in reply.data["rejected"]] == ["validation_error"], reply.body


async def test_huge_integers_are_400(tenant, enroll):
    huge = str(10**30)
    for params in ({"offset": huge}, {"limit": huge}):
        reply = await tenant.admin.call("GET", "/api/v1/orders", params=params)
        assert reply.status == 400, reply.body
    assert (
        await tenant.admin.call("GET", "/api/v1/payments", params={"offset": huge})
    ).status == 400

    site = await tenant.site()
    machine = (await tenant.machine(site["id"]))["machine"]
    mid = machine["id"]
    a1 = next(i for i in machine["catalog"] if i["slot"] == "A1")
    gateway = await enroll(site["id"])
    assert (await gateway.call("GET", "/sync/v1/state", params={"cursor": huge})).status == 400
    assert (await gateway.pull(2**53)).status == 200

    order = event(2**70, "order.snapshot", order_payload(str(uuid.uuid4()), mid, version=1))
    assert (await gateway.push([order])).status == 400  # the seq is the envelope's
    # A huge number inside one event rejects that event alone (validation_error, not stored).
    big_version = order_payload(str(uuid.uuid4()), mid, version=2**70)
    _rejected_alone(await gateway.push([event(1, "order.snapshot", big_version)]))
    stock = {
        "machine_id": mid,
        "catalog_item_id": a1["id"],
        "slot": "A1",
        "quantity": 2**70,
        "delta": -1,
        "reason": "sale",
    }
    _rejected_alone(await gateway.push([event(1, "inventory.changed", stock)]))
    delta = stock | {"quantity": 3, "delta": 2**70}
    _rejected_alone(await gateway.push([event(1, "inventory.changed", delta)]))
    fine = await gateway.push([event(1, "inventory.changed", stock | {"quantity": 3})])
    assert fine.status == 200, fine.body


def _rsa_csr(bits: int) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


async def test_unsupported_csr_keys_are_400_and_keep_the_token(tenant, make_key_and_csr):
    site = await tenant.site()
    token = (await tenant.admin.call("POST", f"/api/v1/sites/{site['id']}/enrollment-tokens")).data
    for csr in (SECP112R1_CSR, _rsa_csr(1024)):
        reply = await tenant.admin.call(
            "POST", "/api/v1/gateways/enroll", {"token": token["token"], "csr_pem": csr}, token=""
        )
        assert reply.status == 400, reply.body
        assert reply.error["code"] == "unsupported_key"
    _, good = make_key_and_csr()
    enrolled = await tenant.admin.call(
        "POST", "/api/v1/gateways/enroll", {"token": token["token"], "csr_pem": good}, token=""
    )
    assert enrolled.status == 201, enrolled.body


async def test_database_data_errors_become_400():
    """The backstop for values the validators let through but the database refuses."""

    async def refuse(request: web.Request) -> web.Response:
        raise sa.exc.DataError("INSERT", {}, ValueError("invalid byte sequence"))

    app = web.Application(middlewares=[envelope_middleware])
    app.router.add_get("/x", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/x") as resp:
                body = await resp.json()
                assert resp.status == 400, body
        assert body["success"] is False and body["error"]["code"] == "validation_error"
    finally:
        await runner.cleanup()
