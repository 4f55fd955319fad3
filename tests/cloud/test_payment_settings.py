"""The tenant's payment provider credentials and money policy: admins only, secrets write-only
and sealed at rest, audited, and every change reaches the tenant's gateways."""

import pytest
import sqlalchemy as sa
from razorpay_fixtures import new_credentials

from cloud.db import schema as t
from cloud.db import sealed
from cloud.db.sealed import SealedDataError
from cloud.payments.registry import open_secret
from contracts.sealing import KeyRing


def provider_body(**overrides):
    return {"provider": "razorpay"} | new_credentials() | overrides


async def audit_rows(cloud, tenant_id):
    async with cloud.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(t.operator_audit)
            .where(t.operator_audit.c.tenant_id == tenant_id)
            .order_by(t.operator_audit.c.created_at)
        )
        return [r._asdict() for r in rows]


async def raw_provider_row(cloud, tenant_id):
    async with cloud.engine.connect() as conn:
        return (
            await conn.execute(
                sa.select(t.payment_providers).where(t.payment_providers.c.tenant_id == tenant_id)
            )
        ).first()


async def test_credentials_are_write_only_and_sealed(tenant, cloud):
    empty = await tenant.admin.call("GET", "/api/v1/payments/provider")
    assert empty.status == 200, empty.body
    assert empty.data["provider"] is None and empty.data["upi_enabled"] is False
    assert empty.data["webhook_url"].endswith(f"/api/v1/webhooks/razorpay/{tenant.id}")

    body = provider_body()
    put = await tenant.admin.call("PUT", "/api/v1/payments/provider", body)
    assert put.status == 200, put.body
    got = await tenant.admin.call("GET", "/api/v1/payments/provider")
    assert got.data == put.data
    data = got.data
    assert data["provider"] == "razorpay" and data["key_id"] == body["key_id"]
    assert data["key_secret_set"] is True and data["webhook_secret_set"] is True
    assert data["upi_enabled"] is True and data["updated_at"] is not None
    assert data["webhook_url"] == f"{cloud.api_url}/api/v1/webhooks/razorpay/{tenant.id}"
    for secret in (body["key_secret"], body["webhook_secret"]):
        assert secret not in str(got.body) and secret not in str(put.body)

    row = await raw_provider_row(cloud, tenant.id)
    for column, plain in (
        ("key_secret", body["key_secret"]),
        ("webhook_secret", body["webhook_secret"]),
    ):
        stored = getattr(row, column)
        assert stored.startswith("v1.") and plain not in stored

    audit = await audit_rows(cloud, tenant.id)
    assert [a["action"] for a in audit] == ["payment_provider.create"]
    assert body["key_id"] in audit[0]["note"]
    assert body["key_secret"] not in audit[0]["note"]
    assert body["webhook_secret"] not in audit[0]["note"]


async def test_rotating_one_secret_keeps_the_other(tenant, cloud):
    body = provider_body()
    assert (await tenant.admin.call("PUT", "/api/v1/payments/provider", body)).status == 200
    before = await raw_provider_row(cloud, tenant.id)
    rotate = {
        "provider": "razorpay",
        "key_id": body["key_id"],
        "webhook_secret": "whsec-new-0123456",
    }
    reply = await tenant.admin.call("PUT", "/api/v1/payments/provider", rotate)
    assert reply.status == 200, reply.body
    after = await raw_provider_row(cloud, tenant.id)
    assert after.key_secret == before.key_secret
    assert after.webhook_secret != before.webhook_secret
    audit = await audit_rows(cloud, tenant.id)
    assert audit[-1]["action"] == "payment_provider.update"
    assert "replaced: webhook_secret" in audit[-1]["note"]


async def test_bad_credentials_are_refused(tenant):
    cases = [
        provider_body(key_id="not-a-key"),
        provider_body(key_secret="short"),
        provider_body(key_secret="has spaces in it, 24 chr"),
        provider_body(webhook_secret="tiny"),
        provider_body(provider="stripe"),
        provider_body(api_url="http://169.254.169.254/"),  # never a tenant's to set
    ]
    for body in cases:
        reply = await tenant.admin.call("PUT", "/api/v1/payments/provider", body)
        assert reply.status == 400, (body, reply.body)
        for secret in (body["key_secret"], body["webhook_secret"]):
            assert secret not in str(reply.body)
    first = {"provider": "razorpay", "key_id": new_credentials()["key_id"]}
    missing = await tenant.admin.call("PUT", "/api/v1/payments/provider", first)
    assert missing.status == 400
    assert {tuple(d["loc"]) for d in missing.error["details"]} == {
        ("key_secret",),
        ("webhook_secret",),
    }


async def test_only_admins_and_only_their_tenant(tenant, make_tenant, cloud):
    assert (
        await tenant.admin.call("PUT", "/api/v1/payments/provider", provider_body())
    ).status == 200
    for role in ("operator", "viewer"):
        user = await tenant.user(role)
        for method, path, body in (
            ("GET", "/api/v1/payments/provider", None),
            ("PUT", "/api/v1/payments/provider", provider_body()),
            ("DELETE", "/api/v1/payments/provider", None),
            ("GET", "/api/v1/payments/policy", None),
            ("PUT", "/api/v1/payments/policy", {"unknown_outcome": "review"}),
        ):
            reply = await user.call(method, path, body)
            assert reply.status == 403, (role, method, path, reply.body)
    other = await make_tenant()
    seen = await other.admin.call("GET", "/api/v1/payments/provider")
    assert seen.data["provider"] is None and seen.data["key_id"] is None
    gone = await other.admin.call("DELETE", "/api/v1/payments/provider")
    assert gone.data == {"provider": None, "deleted": False}
    assert (await raw_provider_row(cloud, tenant.id)) is not None


async def test_changes_reach_the_gateways_money_policy(tenant, enroll, cloud):
    site = await tenant.site()
    mid = (await tenant.machine(site["id"]))["machine"]["id"]
    gateway = await enroll(site["id"])
    first = await gateway.pull(0)
    cursor = first.data["cursor"]
    [machine] = first.data["machines"]
    assert machine["money_policy"] == {
        "unknown_outcome": "refund",
        "disable_slot_after_failures": 3,
        "upi_enabled": False,
        "sandbox_enabled": True,  # the test cloud runs the sandbox (cloud_test_settings)
    }

    assert (
        await tenant.admin.call("PUT", "/api/v1/payments/provider", provider_body())
    ).status == 200
    pulled = await gateway.pull(cursor)
    [machine] = pulled.data["machines"]
    assert machine["id"] == mid and machine["money_policy"]["upi_enabled"] is True
    cursor = pulled.data["cursor"]

    policy = await tenant.admin.call(
        "PUT", "/api/v1/payments/policy", {"unknown_outcome": "review"}
    )
    assert policy.status == 200, policy.body
    assert policy.data["unknown_outcome"] == "review"
    assert policy.data["disable_slot_after_failures"] == 3 and policy.data["upi_enabled"] is True
    pulled = await gateway.pull(cursor)
    [machine] = pulled.data["machines"]
    assert machine["money_policy"] == {
        "unknown_outcome": "review",
        "disable_slot_after_failures": 3,
        "upi_enabled": True,
        "sandbox_enabled": True,
    }
    cursor = pulled.data["cursor"]

    changed = await tenant.admin.call(
        "PUT", "/api/v1/payments/policy", {"disable_slot_after_failures": 5}
    )
    assert changed.data["unknown_outcome"] == "review"
    assert changed.data["disable_slot_after_failures"] == 5
    assert (await tenant.admin.call("GET", "/api/v1/payments/policy")).data == changed.data
    bad = await tenant.admin.call(
        "PUT", "/api/v1/payments/policy", {"disable_slot_after_failures": 0}
    )
    assert bad.status == 400

    disabled = await tenant.admin.call(
        "PUT",
        "/api/v1/payments/provider",
        {"provider": "razorpay", "key_id": new_credentials()["key_id"], "enabled": False},
    )
    assert disabled.status == 200 and disabled.data["upi_enabled"] is False
    pulled = await gateway.pull(cursor)
    assert pulled.data["machines"][0]["money_policy"]["upi_enabled"] is False
    cursor = pulled.data["cursor"]

    deleted = await tenant.admin.call("DELETE", "/api/v1/payments/provider")
    assert deleted.data == {"provider": "razorpay", "deleted": True}
    pulled = await gateway.pull(cursor)
    assert pulled.data["machines"][0]["money_policy"]["upi_enabled"] is False
    actions = [a["action"] for a in await audit_rows(cloud, tenant.id)]
    assert actions == [
        "payment_provider.create",
        "money_policy.update",
        "money_policy.update",
        "payment_provider.update",
        "payment_provider.delete",
    ]


async def test_rekey_reseals_the_provider_secrets(tenant, cloud, settings):
    body = provider_body()
    assert (await tenant.admin.call("PUT", "/api/v1/payments/provider", body)).status == 200
    old = settings.key_ring()
    new = KeyRing.parse(KeyRing.generate_text("rotated"))
    await sealed.rekey(
        sealed.with_keys(cloud.engine, KeyRing(new.active, {**new.keys, **old.keys}))
    )
    try:
        row = await raw_provider_row(cloud, tenant.id)
    finally:
        # The PostgreSQL database is shared by the session's tests: back to their key.
        await sealed.rekey(
            sealed.with_keys(cloud.engine, KeyRing(old.active, {**old.keys, **new.keys}))
        )
    assert row.key_secret.startswith("v1.rotated.") and row.webhook_secret.startswith("v1.rotated.")
    # The new key alone opens them: the old one may go.
    async with sealed.with_keys(cloud.engine, new).connect() as conn:
        assert open_secret(conn, tenant.id, "key_secret", row.key_secret) == body["key_secret"]
        assert (
            open_secret(conn, tenant.id, "webhook_secret", row.webhook_secret)
            == body["webhook_secret"]
        )
        # Bound to their tenant and column: copied elsewhere they do not open.
        with pytest.raises(SealedDataError):
            open_secret(conn, tenant.id, "webhook_secret", row.key_secret)
        with pytest.raises(SealedDataError):
            open_secret(conn, "another-tenant", "key_secret", row.key_secret)
