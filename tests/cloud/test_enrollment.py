"""Gateway enrolment with a one-time token; the sync listener admits only the issued cert."""

import datetime as dt

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


async def test_token_is_single_use_and_cert_is_ours(tenant, api, cloud, make_key_and_csr, settings):
    site = await tenant.site()
    token = (await tenant.admin.call("POST", f"/api/v1/sites/{site['id']}/enrollment-tokens")).data
    key, csr = make_key_and_csr("evil-admin-cn")
    first = await api.call(
        "POST", "/api/v1/gateways/enroll", {"token": token["token"], "csr_pem": csr}
    )
    assert first.status == 201, first.body
    data = first.data
    assert data["site_id"] == site["id"] and data["tenant_id"] == tenant.id
    assert data["sync_url"] == cloud.sync_url
    assert data["ca_pem"] == cloud.ca_pem
    cert = x509.load_pem_x509_certificate(data["certificate_pem"].encode())
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == data["gateway_id"]  # the CSR's subject is ignored
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert cert.public_key() == key.public_key()

    again = await api.call(
        "POST",
        "/api/v1/gateways/enroll",
        {"token": token["token"], "csr_pem": make_key_and_csr()[1]},
    )
    assert again.status == 409
    wrong = await api.call(
        "POST", "/api/v1/gateways/enroll", {"token": "x" * 40, "csr_pem": make_key_and_csr()[1]}
    )
    assert wrong.status == 401

    for private in ("ca.key", "sync-server.key", "jwt_secret"):
        path = settings.data_dir / private
        assert not path.exists() or path.stat().st_mode & 0o777 == 0o600, private
    assert (settings.data_dir / "ca.key").exists()

    listed = await tenant.admin.call("GET", "/api/v1/gateways")
    assert [g["id"] for g in listed.data] == [data["gateway_id"]]
    assert listed.data[0]["status"] == "active"


async def test_bad_csr_is_400(tenant, api, make_key_and_csr):
    site = await tenant.site()
    token = (await tenant.admin.call("POST", f"/api/v1/sites/{site['id']}/enrollment-tokens")).data
    bad = await api.call(
        "POST", "/api/v1/gateways/enroll", {"token": token["token"], "csr_pem": "-" * 200}
    )
    assert bad.status == 400
    # The token survives a failed attempt.
    ok = await api.call(
        "POST",
        "/api/v1/gateways/enroll",
        {"token": token["token"], "csr_pem": make_key_and_csr()[1]},
    )
    assert ok.status == 201


def _foreign_cert(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A self-made CA's client certificate carrying a real gateway's id as CN."""
    from cryptography.hazmat.primitives import serialization

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Rogue CA")])
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM).decode()


async def test_sync_listener_requires_the_issued_certificate(
    tenant, cloud, enroll, tmp_path, client_ssl
):
    site = await tenant.site()
    gateway = await enroll(site["id"])
    ok = await gateway.pull(0)
    assert ok.status == 200, ok.body

    no_cert = client_ssl(cloud.ca_pem, tmp_path)
    key, pem = _foreign_cert(gateway.id)
    rogue = client_ssl(cloud.ca_pem, tmp_path, pem, key)
    for context in (no_cert, rogue):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            with pytest.raises(aiohttp.ClientError):
                async with session.get(cloud.sync_url + "/sync/v1/state?cursor=0") as resp:
                    await resp.read()

    # Plain HTTP to the TLS port gets nowhere either.
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            url = cloud.sync_url.replace("https://", "http://") + "/sync/v1/state"
            async with session.get(url) as resp:
                await resp.read()


async def test_revoked_gateway_is_refused(tenant, cloud, enroll):

    from cloud.db import schema as t

    site = await tenant.site()
    gateway = await enroll(site["id"])
    async with cloud.engine.begin() as conn:
        await conn.execute(
            t.gateways.update().where(t.gateways.c.id == gateway.id).values(status="revoked")
        )
    refused = await gateway.pull(0)
    assert refused.status == 401
    assert refused.body["error"]["code"] == "unauthorized"
