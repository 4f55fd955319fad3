"""The cloud attacker against accounts: a stolen access token used to guess the account's
password through change-password, and the password change that completes a takeover, must show
in the tenant's login audit like login guesses do."""

# ruff: noqa: F811 - pytest fixtures are imported by name and then taken as parameters
from sec_accounts_support import (  # noqa: F401
    PAIR_FREE,
    PASSWORD,
    add_user,
    api,
    cloud,
    db_url,
    from_address,
    http,
    login,
    make_tenant,
    postgres_url,
    settings,
    tenant,
)

CHANGE = "/api/v1/auth/change-password"


async def _audit(tenant, email):
    rows = (await tenant.admin.call("GET", "/api/v1/audit/logins")).data
    return [(r["outcome"], r["reason"], r["client_address"]) for r in rows if r["email"] == email]


async def test_password_guesses_through_change_password_are_audited(tenant, from_address):
    row = await add_user(tenant, "operator")
    tokens = await tenant.admin.login(row["email"])
    thief = from_address("127.0.0.9").as_user(tokens["access_token"])
    for i in range(PAIR_FREE + 2):
        reply = await thief.call(
            "POST", CHANGE, {"current_password": f"guess {i}", "new_password": "attacker's own"}
        )
        assert reply.status == (403 if i < PAIR_FREE else 429), reply.body
    audit = await _audit(tenant, row["email"])
    guesses = [a for a in audit if a[1] == "change_password_bad_password"]
    assert guesses == [("failure", "change_password_bad_password", "127.0.0.9")] * PAIR_FREE
    # The refusals while locked are written too (once a minute per address, like login's).
    assert ("refused", "throttled", "127.0.0.9") in audit


async def test_a_password_change_is_audited(tenant, from_address):
    row = await add_user(tenant, "operator")
    tokens = await tenant.admin.login(row["email"])
    me = from_address("127.0.0.10").as_user(tokens["access_token"])
    reply = await me.call(
        "POST", CHANGE, {"current_password": PASSWORD, "new_password": "a brand new password"}
    )
    assert reply.status == 200, reply.body
    assert (await _audit(tenant, row["email"]))[0] == ("success", "password_changed", "127.0.0.10")
