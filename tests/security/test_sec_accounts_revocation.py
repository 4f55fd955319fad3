"""Attack 5: access tokens outlived disable, delete, demotion and logout (up to the 900 s TTL); a
deleted admin's token could still create a new admin. Now every authenticated request checks the
session and the user in the database, and there is an API to manage users."""

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


async def _second_admin(tenant):
    row = await add_user(tenant, "admin")
    tokens = await tenant.admin.login(row["email"])
    return row, tenant.admin.as_user(tokens["access_token"]), tokens


async def test_deleted_admins_token_cannot_create_an_admin(tenant):
    row, mallory, _ = await _second_admin(tenant)
    assert (await mallory.call("GET", "/api/v1/users")).status == 200

    deleted = await tenant.admin.call("DELETE", f"/api/v1/users/{row['id']}")
    assert deleted.status == 200, deleted.body
    assert deleted.data == {"id": row["id"], "deleted": True}

    attempt = await mallory.call(
        "POST",
        "/api/v1/users",
        {"email": "backdoor@example.com", "password": PASSWORD, "role": "admin"},
    )
    assert attempt.status == 401, attempt.body
    assert attempt.error["code"] == "unauthorized"
    users = (await tenant.admin.call("GET", "/api/v1/users")).data
    assert "backdoor@example.com" not in {u["email"] for u in users}
    assert row["id"] not in {u["id"] for u in users}
    assert (await login(tenant.admin, row["email"])).status == 401


async def test_disabled_users_token_and_refresh_token_are_refused(tenant):
    row = await add_user(tenant, "operator")
    tokens = await tenant.admin.login(row["email"])
    operator = tenant.admin.as_user(tokens["access_token"])
    assert (await operator.call("GET", "/api/v1/machines")).status == 200

    patched = await tenant.admin.call("PATCH", f"/api/v1/users/{row['id']}", {"active": False})
    assert patched.status == 200 and patched.data["active"] is False

    refused = await operator.call("GET", "/api/v1/machines")
    assert refused.status == 401 and refused.error["code"] == "unauthorized"
    refresh = await tenant.admin.call(
        "POST", "/api/v1/auth/refresh", {"refresh_token": tokens["refresh_token"]}
    )
    assert refresh.status == 401
    assert (await login(tenant.admin, row["email"])).status == 401
    audit = (await tenant.admin.call("GET", "/api/v1/audit/logins")).data
    assert (audit[0]["email"], audit[0]["outcome"], audit[0]["reason"]) == (
        row["email"],
        "failure",
        "disabled",
    )

    # Enabling the user again does not bring the old tokens back.
    enabled = await tenant.admin.call("PATCH", f"/api/v1/users/{row['id']}", {"active": True})
    assert enabled.status == 200 and enabled.data["active"] is True
    assert (await operator.call("GET", "/api/v1/machines")).status == 401
    assert (await login(tenant.admin, row["email"])).status == 200


async def test_demoted_admins_token_carries_only_the_new_role(tenant):
    row, demoted, _ = await _second_admin(tenant)
    patched = await tenant.admin.call("PATCH", f"/api/v1/users/{row['id']}", {"role": "viewer"})
    assert patched.status == 200 and patched.data["role"] == "viewer"

    attempt = await demoted.call(
        "POST",
        "/api/v1/users",
        {"email": "again@example.com", "password": PASSWORD, "role": "admin"},
    )
    assert attempt.status == 403, attempt.body
    promote_self = await demoted.call("PATCH", f"/api/v1/users/{row['id']}", {"role": "admin"})
    assert promote_self.status == 403
    assert (await demoted.call("POST", "/api/v1/sites", {"name": "nope"})).status == 403
    # Reads a viewer may do still work with the same token.
    assert (await demoted.call("GET", "/api/v1/machines")).status == 200
    profile = await demoted.call("GET", "/api/v1/auth/profile")
    assert profile.data["role"] == "viewer"
    assert "users:write" not in profile.data["permissions"]


async def test_logout_ends_the_access_token(api, tenant):
    tokens = await api.login(tenant.email)
    me = api.as_user(tokens["access_token"])
    assert (await me.call("GET", "/api/v1/auth/profile")).status == 200
    out = await api.call("POST", "/api/v1/auth/logout", {"refresh_token": tokens["refresh_token"]})
    assert out.status == 200
    after = await me.call("GET", "/api/v1/auth/profile")
    assert after.status == 401 and "session" in after.error["message"]
    # Another session of the same user is untouched.
    assert (await tenant.admin.call("GET", "/api/v1/auth/profile")).status == 200


async def test_refresh_keeps_the_session_and_reuse_ends_its_access_tokens(api, tenant):
    first = await api.login(tenant.email)
    rotated = await api.call(
        "POST", "/api/v1/auth/refresh", {"refresh_token": first["refresh_token"]}
    )
    assert rotated.status == 200
    newer = api.as_user(rotated.data["access_token"])
    assert (await newer.call("GET", "/api/v1/machines")).status == 200
    # The stolen first refresh token comes back: the whole session ends, access tokens too.
    reuse = await api.call(
        "POST", "/api/v1/auth/refresh", {"refresh_token": first["refresh_token"]}
    )
    assert reuse.status == 401
    assert (await newer.call("GET", "/api/v1/machines")).status == 401


async def test_password_change_ends_the_other_sessions(api, tenant):
    row = await add_user(tenant, "operator")
    here = await api.login(row["email"])
    elsewhere = await api.login(row["email"])
    me = api.as_user(here["access_token"])

    wrong = await me.call(
        "POST",
        "/api/v1/auth/change-password",
        {"current_password": "not it at all", "new_password": "a brand new passphrase"},
    )
    assert wrong.status == 403
    changed = await me.call(
        "POST",
        "/api/v1/auth/change-password",
        {"current_password": PASSWORD, "new_password": "a brand new passphrase"},
    )
    assert changed.status == 200, changed.body
    assert changed.data == {"changed": True, "other_sessions_ended": True}

    assert (await me.call("GET", "/api/v1/machines")).status == 200
    other = api.as_user(elsewhere["access_token"])
    assert (await other.call("GET", "/api/v1/machines")).status == 401
    other_refresh = await api.call(
        "POST", "/api/v1/auth/refresh", {"refresh_token": elsewhere["refresh_token"]}
    )
    assert other_refresh.status == 401
    assert (await login(api, row["email"])).status == 401
    assert (await login(api, row["email"], "a brand new passphrase")).status == 200


async def test_admin_password_reset_is_one_time_and_forces_a_change(api, tenant):
    row = await add_user(tenant, "operator")
    old = await api.login(row["email"])
    reset = await tenant.admin.call("POST", f"/api/v1/users/{row['id']}/password-reset")
    assert reset.status == 200, reset.body
    temporary = reset.data["temporary_password"]
    assert len(temporary) >= 16
    # The user's existing sessions end; the old password is gone.
    assert (await api.as_user(old["access_token"]).call("GET", "/api/v1/machines")).status == 401
    assert (await login(api, row["email"])).status == 401

    first = await login(api, row["email"], temporary)
    assert first.status == 200 and first.data["password_change_required"] is True
    limited = api.as_user(first.data["access_token"])
    blocked = await limited.call("GET", "/api/v1/machines")
    assert blocked.status == 403 and blocked.error["details"] == {"password_change_required": True}
    assert (await limited.call("GET", "/api/v1/auth/profile")).data["password_change_required"]

    changed = await limited.call(
        "POST",
        "/api/v1/auth/change-password",
        {"current_password": temporary, "new_password": "only the user knows this"},
    )
    assert changed.status == 200, changed.body
    assert (await limited.call("GET", "/api/v1/machines")).status == 200
    # Used once: the temporary password no longer opens anything.
    assert (await login(api, row["email"], temporary)).status == 401
    again = await login(api, row["email"], "only the user knows this")
    assert again.status == 200 and again.data["password_change_required"] is False

    me = (await tenant.admin.call("GET", "/api/v1/auth/profile")).data["id"]
    own = await tenant.admin.call("POST", f"/api/v1/users/{me}/password-reset")
    assert own.status == 409


async def test_the_last_active_admin_stays(tenant):
    me = (await tenant.admin.call("GET", "/api/v1/auth/profile")).data["id"]
    for method, body in [
        ("PATCH", {"role": "operator"}),
        ("PATCH", {"active": False}),
        ("DELETE", None),
    ]:
        reply = await tenant.admin.call(method, f"/api/v1/users/{me}", body)
        assert reply.status == 409, (method, body, reply.body)
        assert reply.error["code"] == "conflict"
    # A disabled admin does not count as the one that stays.
    row, _, _ = await _second_admin(tenant)
    assert (
        await tenant.admin.call("PATCH", f"/api/v1/users/{row['id']}", {"active": False})
    ).status == 200
    assert (await tenant.admin.call("DELETE", f"/api/v1/users/{me}")).status == 409
    # With a second active admin, the first may step down.
    assert (
        await tenant.admin.call("PATCH", f"/api/v1/users/{row['id']}", {"active": True})
    ).status == 200
    assert (
        await tenant.admin.call("PATCH", f"/api/v1/users/{me}", {"role": "viewer"})
    ).status == 200
    assert (await tenant.admin.call("POST", "/api/v1/sites", {"name": "x"})).status == 403


async def test_user_management_is_tenant_scoped_and_role_checked(make_tenant):
    a, b = await make_tenant(), await make_tenant()
    victim = await add_user(b, "operator")
    vid = victim["id"]
    for method, path, body in [
        ("PATCH", f"/api/v1/users/{vid}", {"role": "admin"}),
        ("PATCH", f"/api/v1/users/{vid}", {"active": False}),
        ("DELETE", f"/api/v1/users/{vid}", None),
        ("POST", f"/api/v1/users/{vid}/password-reset", None),
    ]:
        reply = await a.admin.call(method, path, body)
        assert reply.status == 404, (method, path, reply.body)
        assert reply.error["code"] == "not_found"
    listed = (await b.admin.call("GET", "/api/v1/users")).data
    assert {"id": vid, "role": "operator", "active": True}.items() <= next(
        u for u in listed if u["id"] == vid
    ).items()
    assert (await login(b.admin, victim["email"])).status == 200

    operator_row = await add_user(a, "operator")
    operator = a.admin.as_user((await a.admin.login(operator_row["email"]))["access_token"])
    target = await add_user(a, "viewer")
    for method, path, body in [
        ("PATCH", f"/api/v1/users/{target['id']}", {"role": "admin"}),
        ("PATCH", f"/api/v1/users/{operator_row['id']}", {"role": "admin"}),
        ("DELETE", f"/api/v1/users/{target['id']}", None),
        ("POST", f"/api/v1/users/{target['id']}/password-reset", None),
        ("GET", "/api/v1/audit/logins", None),
    ]:
        reply = await operator.call(method, path, body)
        assert reply.status == 403, (method, path, reply.body)
    bad = await a.admin.call("PATCH", f"/api/v1/users/{target['id']}", {})
    assert bad.status == 400
