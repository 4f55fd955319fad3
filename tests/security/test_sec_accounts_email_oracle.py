"""Attack 8, first item: an admin of tenant B creating a user with an e-mail that exists in tenant
A learned that it exists (409). Accounts are now unique per tenant: B's admin gets the same 201
whether or not the address is used elsewhere, and each account logs in with its own password."""

# ruff: noqa: F811 - pytest fixtures are imported by name and then taken as parameters
from sec_accounts_support import (  # noqa: F401
    PASSWORD,
    add_user,
    api,
    cloud,
    db_url,
    http,
    login,
    make_tenant,
    postgres_url,
    settings,
    tenant,
)


async def test_creating_an_address_used_in_another_tenant_reveals_nothing(make_tenant, api):
    a, b = await make_tenant(), await make_tenant()
    alice = await add_user(a, "operator", email="alice@shared.example")

    taken = await b.admin.call(
        "POST",
        "/api/v1/users",
        {"email": "Alice@Shared.example", "password": "b's own password", "role": "viewer"},
    )
    fresh = await b.admin.call(
        "POST",
        "/api/v1/users",
        {"email": "nobody-yet@shared.example", "password": "b's own password", "role": "viewer"},
    )
    assert taken.status == fresh.status == 201, (taken.body, fresh.body)
    assert set(taken.data) == set(fresh.data)
    assert taken.data["tenant_id"] == b.id and taken.data["id"] != alice["id"]

    # Each account opens its own tenant with its own password; neither can reach the other.
    as_alice = await login(api, "alice@shared.example")
    assert as_alice.status == 200 and as_alice.data["access_token"]
    alice_profile = await api.as_user(as_alice.data["access_token"]).call(
        "GET", "/api/v1/auth/profile"
    )
    assert alice_profile.data["tenant_id"] == a.id
    as_b = await login(api, "alice@shared.example", "b's own password")
    assert as_b.status == 200
    b_profile = await api.as_user(as_b.data["access_token"]).call("GET", "/api/v1/auth/profile")
    assert b_profile.data["tenant_id"] == b.id

    # B's admin managing "their" alice never touches A's.
    assert (
        await b.admin.call("PATCH", f"/api/v1/users/{taken.data['id']}", {"active": False})
    ).status == 200
    assert (await login(api, "alice@shared.example")).status == 200
    assert all(u["id"] != alice["id"] for u in (await b.admin.call("GET", "/api/v1/users")).data)


async def test_a_duplicate_within_the_tenant_is_still_409(tenant):
    row = await add_user(tenant, "viewer")
    again = await tenant.admin.call(
        "POST", "/api/v1/users", {"email": row["email"], "password": PASSWORD, "role": "admin"}
    )
    assert again.status == 409 and again.error["code"] == "conflict"


async def test_one_password_for_two_tenants_needs_the_tenant(make_tenant, api):
    a, b = await make_tenant(), await make_tenant()
    await add_user(a, "viewer", email="both@shared.example")
    await add_user(b, "viewer", email="both@shared.example")
    ambiguous = await login(api, "both@shared.example")
    assert ambiguous.status == 409
    assert sorted(ambiguous.error["details"]["tenant_ids"]) == sorted([a.id, b.id])
    audit = (await a.admin.call("GET", "/api/v1/audit/logins")).data
    assert ("refused", "several_tenants") in {
        (r["outcome"], r["reason"]) for r in audit if r["email"] == "both@shared.example"
    }
    chosen = await login(api, "both@shared.example", tenant_id=b.id)
    assert chosen.status == 200
    profile = await api.as_user(chosen.data["access_token"]).call("GET", "/api/v1/auth/profile")
    assert profile.data["tenant_id"] == b.id


async def test_a_login_does_the_same_work_whether_or_not_another_tenant_has_the_address(
    make_tenant, api, cloud
):
    # Timing: hashes run one after another, so one more account would mean one more hash's time.
    a, b = await make_tenant(), await make_tenant()
    await add_user(b, "viewer", email="solo@b.example", password="b's own password")
    await add_user(a, "viewer", email="twice@shared.example")
    await add_user(b, "viewer", email="twice@shared.example", password="b's own password")
    passwords = cloud.context.passwords
    work = {}
    for email in ("solo@b.example", "twice@shared.example", "nobody@nowhere.example"):
        before = passwords.verifications
        await login(api, email, "b's own password")
        work[email] = passwords.verifications - before
    assert set(work.values()) == {cloud.settings.login_password_checks}, work
