"""The cloud attacker on every authenticated route of the public API at once (the list comes from
the route registry, so a route added later is covered too): a viewer, an operator and a demoted
admin get 403 wherever their role lacks the permission; the tokens of a disabled, a deleted and a
logged-out user get 401 everywhere; a temporary password's token opens only change-password,
profile and logout. These held when tried; they guard each new route."""

# ruff: noqa: F811 - pytest fixtures are imported by name and then taken as parameters
import re
from collections.abc import Iterator
from typing import Any

from sec_accounts_support import (  # noqa: F401
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

from cloud.app import public_endpoints
from cloud.auth.permissions import ROLE_PERMISSIONS, Role
from cloud.auth.sessions import PASSWORD_CHANGE_PATHS
from cloud.http.registry import Endpoint

NO_SUCH_ID = "00000000-0000-0000-0000-000000000000"


def _authenticated() -> Iterator[tuple[str, str, Endpoint]]:
    for endpoint in public_endpoints():
        if not endpoint.public:
            yield endpoint.method, re.sub(r"\{[^}]+\}", NO_SUCH_ID, endpoint.path), endpoint


async def _call(client: Any, method: str, path: str) -> Any:
    return await client.call(method, path, {} if method in ("POST", "PUT", "PATCH") else None)


async def test_every_route_checks_the_role_from_the_database(tenant):
    row = await add_user(tenant, "admin")
    demoted = tenant.admin.as_user((await tenant.admin.login(row["email"]))["access_token"])
    patched = await tenant.admin.call("PATCH", f"/api/v1/users/{row['id']}", {"role": "viewer"})
    assert patched.status == 200, patched.body
    callers = [
        ("demoted admin", demoted, Role.VIEWER),
        ("viewer", await tenant.user("viewer"), Role.VIEWER),
        ("operator", await tenant.user("operator"), Role.OPERATOR),
    ]
    wrong = []
    for who, client, role in callers:
        for method, path, endpoint in _authenticated():
            reply = await _call(client, method, path)
            allowed = endpoint.permission is None or endpoint.permission in ROLE_PERMISSIONS[role]
            if (reply.status == 403) == allowed or reply.status in (401, 500):
                wrong.append((who, method, path, reply.status))
    assert not wrong, wrong


async def test_every_route_refuses_a_disabled_deleted_or_logged_out_users_token(tenant):
    rows = [await add_user(tenant, "admin") for _ in range(3)]
    tokens = [await tenant.admin.login(row["email"]) for row in rows]
    disabled = await tenant.admin.call("PATCH", f"/api/v1/users/{rows[0]['id']}", {"active": False})
    deleted = await tenant.admin.call("DELETE", f"/api/v1/users/{rows[1]['id']}")
    logout = await tenant.admin.call(
        "POST", "/api/v1/auth/logout", {"refresh_token": tokens[2]["refresh_token"]}
    )
    assert (disabled.status, deleted.status, logout.status) == (200, 200, 200)
    wrong = []
    for token in tokens:
        client = tenant.admin.as_user(token["access_token"])
        for method, path, _ in _authenticated():
            reply = await _call(client, method, path)
            if reply.status != 401:
                wrong.append((method, path, reply.status))
    assert not wrong, wrong


async def test_a_temporary_password_opens_only_the_password_change(tenant):
    row = await add_user(tenant, "admin")
    reset = await tenant.admin.call("POST", f"/api/v1/users/{row['id']}/password-reset")
    assert reset.status == 200, reset.body
    tokens = (await login(tenant.admin, row["email"], reset.data["temporary_password"])).data
    refreshed = await tenant.admin.call(
        "POST", "/api/v1/auth/refresh", {"refresh_token": tokens["refresh_token"]}
    )
    assert refreshed.status == 200, refreshed.body
    wrong = []
    for token in (tokens["access_token"], refreshed.data["access_token"]):
        client = tenant.admin.as_user(token)
        for method, path, _ in _authenticated():
            if path in PASSWORD_CHANGE_PATHS:
                continue
            reply = await _call(client, method, path)
            if reply.status != 403 or not reply.error["details"]["password_change_required"]:
                wrong.append((method, path, reply.status))
    assert not wrong, wrong
