"""Attack 6: no login throttling (200 wrong passwords in 21 s, all 401, no 429, no lockout, no
log). Now failures lock per account+address, per address and (briefly) per account, with 429 and
Retry-After; the real user is not locked out from their own address; every attempt is audited."""

# ruff: noqa: F811 - pytest fixtures are imported by name and then taken as parameters
import asyncio

from sec_accounts_support import (  # noqa: F401
    ACCOUNT_CAP_S,
    ACCOUNT_FREE,
    ADDRESS_FREE,
    LOCK_S,
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

from cloud.auth.passwords import Passwords
from cloud.errors import ServiceBusy


def _retry_after(reply_headers_value: str | None) -> int:
    assert reply_headers_value is not None
    return int(reply_headers_value)


async def _raw_login(client, email, password):
    async with client.session.post(
        client.base + "/api/v1/auth/login", json={"email": email, "password": password}
    ) as resp:
        return resp.status, resp.headers.get("Retry-After"), await resp.json()


async def test_one_account_from_one_address_is_locked_with_429(tenant, from_address):
    victim = await add_user(tenant, "operator")
    attacker = from_address("127.0.0.5")
    for _ in range(PAIR_FREE):
        status, _, body = await _raw_login(attacker, victim["email"], "wrong guess")
        assert status == 401, body
    status, retry_after, body = await _raw_login(attacker, victim["email"], "wrong guess")
    assert status == 429, body
    assert body["success"] is False and body["error"]["code"] == "too_many_requests"
    assert 1 <= _retry_after(retry_after) <= LOCK_S
    assert body["error"]["details"] == {"retry_after_s": _retry_after(retry_after)}
    # While locked even the right password is refused from that address: guessing stops.
    status, _, _ = await _raw_login(attacker, victim["email"], PASSWORD)
    assert status == 429
    # The real user, from their own address, is not affected.
    assert (await login(from_address("127.0.0.2"), victim["email"])).status == 200


async def test_one_address_spraying_many_accounts_is_locked(tenant, from_address):
    sprayer = from_address("127.0.0.6")
    statuses = []
    for i in range(ADDRESS_FREE + 1):
        status, retry_after, _ = await _raw_login(sprayer, f"user{i}@example.com", "Winter2026!")
        statuses.append(status)
    assert statuses[:ADDRESS_FREE] == [401] * ADDRESS_FREE
    assert statuses[ADDRESS_FREE] == 429
    assert _retry_after(retry_after) >= 1
    # Another address is not affected by this one's lock.
    assert (await login(from_address("127.0.0.7"), tenant.email)).status == 200


async def test_many_addresses_cannot_lock_the_real_user_out(tenant, from_address):
    victim = await add_user(tenant, "operator")
    home = from_address("127.0.0.2")
    assert (await login(home, victim["email"])).status == 200  # the user's usual address
    # A guesser with several addresses gets its few free tries on this account, and then the
    # account-wide lock stops every new address too.
    statuses = []
    for n in range(3, 6):
        attacker = from_address(f"127.0.0.{n}")
        for _ in range(PAIR_FREE):
            status, _, _ = await _raw_login(attacker, victim["email"], "wrong guess")
            statuses.append(status)
    assert statuses == [401] * ACCOUNT_FREE + [429] * (3 * PAIR_FREE - ACCOUNT_FREE)
    # The account-wide lock holds for a new address, but only briefly ...
    status, retry_after, _ = await _raw_login(from_address("127.0.0.9"), victim["email"], PASSWORD)
    assert status == 429
    assert _retry_after(retry_after) <= ACCOUNT_CAP_S
    # ... and not at all for the address the user logged in from before.
    assert (await login(home, victim["email"])).status == 200


async def test_a_concurrent_burst_gets_only_the_free_tries(tenant, from_address):
    victim = await add_user(tenant, "viewer")
    attacker = from_address("127.0.0.8")
    results = await asyncio.gather(
        *(_raw_login(attacker, victim["email"], f"guess {i}") for i in range(30))
    )
    statuses = [status for status, _, _ in results]
    # Attempts are counted before the password is checked, so a burst cannot slip past.
    assert statuses.count(401) <= PAIR_FREE
    assert statuses.count(429) >= 30 - PAIR_FREE
    assert set(statuses) <= {401, 429}
    audit = (await tenant.admin.call("GET", "/api/v1/audit/logins")).data
    mine = [(r["outcome"], r["reason"]) for r in audit if r["email"] == victim["email"]]
    assert mine.count(("failure", "bad_password")) == statuses.count(401)
    # The 429s are in the tenant's audit too, but as one row a minute, not one per request.
    assert mine.count(("refused", "throttled")) == 1


async def test_logins_are_audited_for_the_tenants_admins_only(make_tenant, from_address):
    a, b = await make_tenant(), await make_tenant()
    user = await add_user(a, "viewer")
    client = from_address("127.0.0.3")
    assert (await login(client, user["email"], "the wrong one")).status == 401
    assert (await login(client, user["email"])).status == 200
    assert (await login(client, "nobody-here@example.com", "whatever")).status == 401

    rows = (await a.admin.call("GET", "/api/v1/audit/logins", params={"limit": "50"})).data
    mine = [r for r in rows if r["email"] == user["email"]]
    assert [(r["outcome"], r["reason"]) for r in mine] == [
        ("success", "password"),
        ("failure", "bad_password"),
    ]
    assert all(r["user_id"] == user["id"] and r["client_address"] == "127.0.0.3" for r in mine)
    assert "the wrong one" not in str(rows) and PASSWORD not in str(rows)
    # Tenant-scoped: B's admin sees none of A's rows; nobody sees attempts on unknown e-mails.
    b_rows = (await b.admin.call("GET", "/api/v1/audit/logins")).data
    assert all(r["email"] != user["email"] for r in b_rows)
    assert all(r["email"] != "nobody-here@example.com" for r in rows + b_rows)
    viewer = a.admin.as_user((await a.admin.login(user["email"]))["access_token"])
    assert (await viewer.call("GET", "/api/v1/audit/logins")).status == 403


async def test_change_password_cannot_be_used_to_guess(tenant):
    row = await add_user(tenant, "operator")
    me = tenant.admin.as_user((await tenant.admin.login(row["email"]))["access_token"])
    statuses = []
    for i in range(PAIR_FREE + 1):
        reply = await me.call(
            "POST",
            "/api/v1/auth/change-password",
            {"current_password": f"guess number {i}", "new_password": "whatever it is now"},
        )
        statuses.append(reply.status)
    assert statuses == [403] * PAIR_FREE + [429]


async def test_many_successful_logins_from_one_address_never_lock_it(tenant, from_address):
    office = from_address("127.0.0.4")  # many users behind one NAT
    users = [await add_user(tenant, "viewer") for _ in range(3)]
    for _ in range(ADDRESS_FREE):
        for user in users:
            assert (await login(office, user["email"])).status == 200


async def test_password_hashing_is_bounded_and_says_busy_when_saturated():
    # Production cost, one slot, a very short wait: the guesses queue on one pool thread and
    # whoever cannot get the slot in time is told to come back (503), not left to pile up.
    hasher = Passwords(3, 65536, 4, concurrency=1, wait_s=0.01)
    try:
        stored = await hasher.hash(PASSWORD)
        results = await asyncio.gather(
            *(hasher.verify(stored, f"guess {i}") for i in range(4)), return_exceptions=True
        )
    finally:
        hasher.close()
    busy = [r for r in results if isinstance(r, ServiceBusy)]
    assert busy and all(r is False or isinstance(r, ServiceBusy) for r in results)
    assert busy[0].status == 503 and busy[0].headers["Retry-After"] == "1"
