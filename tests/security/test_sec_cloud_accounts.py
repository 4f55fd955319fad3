"""The cloud attacker against accounts (the real cloud on SQLite and PostgreSQL): guesses through
change-password with a stolen token, another tenant's admin using a same-e-mail account of their
own against the login throttle, e-mails that grow when lower-cased, logins in flight racing a
password change or a disable, and a temporary password kept alive in its session."""

# ruff: noqa: F811 - pytest fixtures are imported by name and then taken as parameters
import asyncio
from datetime import UTC, datetime, timedelta

import jwt
from sec_accounts_support import (  # noqa: F401
    ACCOUNT_FREE,
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

from cloud.db import schema as t

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


async def _same_email_elsewhere(make_tenant, victim) -> str:
    """Another tenant's admin gives an account of their own tenant the victim's e-mail (accounts
    are per tenant, so this is allowed and says nothing); returns its password."""
    evil = await make_tenant()
    await add_user(evil, "viewer", email=victim["email"], password="the evil tenant's password")
    return "the evil tenant's password"


async def test_another_tenants_account_with_the_same_email_grants_no_trust(
    tenant, make_tenant, from_address
):
    """The account-wide limit is the brake on a guesser with many addresses, and addresses the
    account logged in from are exempt. Trust came from any success with the e-mail, so another
    tenant's admin made every address of theirs trusted by logging in to their own same-e-mail
    account from it, and then guessed the victim's password from all of them unbraked."""
    victim = await add_user(tenant, "operator")
    home = from_address("127.0.3.250")
    assert (await login(home, victim["email"])).status == 200
    own_password = await _same_email_elsewhere(make_tenant, victim)
    addresses = [from_address(f"127.0.3.{n}") for n in range(1, 6)]
    for client in addresses:
        assert (await login(client, victim["email"], own_password)).status == 200
    statuses = []
    for i, client in enumerate(addresses[:4]):
        for j in range(PAIR_FREE):
            statuses.append((await login(client, victim["email"], f"guess {i}.{j}")).status)
    assert statuses == [401] * ACCOUNT_FREE + [429] * (4 * PAIR_FREE - ACCOUNT_FREE)
    # While the account-wide lock holds, a trusted address still opens the accounts it is
    # trusted for, and only those: the attacker's own account, the victim's from the victim's
    # home.
    spare = addresses[4]
    assert (await login(spare, victim["email"], own_password)).status == 200
    refused = await login(spare, victim["email"])
    assert refused.status == 429 and refused.error["code"] == "too_many_requests"
    assert (await login(home, victim["email"])).status == 200


async def test_another_tenants_logins_do_not_reset_the_victims_counters(
    tenant, make_tenant, from_address
):
    """A success cleared the account's counters, so logging in to the same-e-mail account of
    one's own tenant between guesses reset the victim's account-wide count (and, from the
    guessing address, its account+address count: the next test)."""
    victim = await add_user(tenant, "operator")
    own_password = await _same_email_elsewhere(make_tenant, victim)
    elsewhere = from_address("127.0.4.250")
    statuses = []
    for n in range(1, 5):
        client = from_address(f"127.0.4.{n}")
        for j in range(PAIR_FREE - 1):
            statuses.append((await login(client, victim["email"], f"guess {n}.{j}")).status)
        assert (await login(elsewhere, victim["email"], own_password)).status == 200
    assert statuses == [401] * ACCOUNT_FREE + [429] * (4 * (PAIR_FREE - 1) - ACCOUNT_FREE)


async def test_own_logins_between_guesses_do_not_reset_the_address_count(
    tenant, make_tenant, from_address
):
    victim = await add_user(tenant, "operator")
    own_password = await _same_email_elsewhere(make_tenant, victim)
    guesser = from_address("127.0.4.200")
    statuses = []
    for j in range(3):
        for k in range(PAIR_FREE - 1):
            statuses.append((await login(guesser, victim["email"], f"again {j}.{k}")).status)
        await login(guesser, victim["email"], own_password)
    assert statuses[PAIR_FREE:] == [429] * (len(statuses) - PAIR_FREE)


async def test_an_email_that_grows_when_lower_cased_is_a_clear_4xx(tenant):
    """ "\\u0130" (capital I with dot) lower-cases to two characters, so a 305-character address
    became 605 after the server's lower-casing: past the throttle key and e-mail columns, and
    PostgreSQL answered login and user creation with 500."""
    grown = "\u0130" * 300 + "@x.io"
    assert len(grown) <= 320 < len(grown.lower())
    reply = await login(tenant.admin, grown, "whatever it is")
    assert reply.status == 401 and reply.error["code"] == "unauthorized", reply.body
    created = await tenant.admin.call(
        "POST", "/api/v1/users", {"email": grown, "password": PASSWORD, "role": "viewer"}
    )
    assert created.status == 400 and created.error["code"] == "validation_error", created.body
    users = (await tenant.admin.call("GET", "/api/v1/users")).data
    assert all(len(u["email"]) <= 320 for u in users)
    # One that stays within 320 characters once lower-cased is a normal account.
    fits = "\u0130" * 100 + "@x.io"
    created = await tenant.admin.call(
        "POST", "/api/v1/users", {"email": fits, "password": PASSWORD, "role": "viewer"}
    )
    assert created.status == 201 and created.data["email"] == fits.lower(), created.body
    assert (await login(tenant.admin, fits)).status == 200


async def _logins_in_flight(from_address, email: str, first: int) -> list:
    """Logins with the account's current password from four addresses, started and left
    waiting for the password hasher (one hash at a time), as a thief holding the old password
    keeps logging in."""
    clients = [from_address(f"127.0.6.{first + n}") for n in range(4)]
    futures = [asyncio.ensure_future(login(client, email)) for client in clients]
    await asyncio.sleep(0)
    return futures


async def _surviving(tenant, futures, version: int | None = None) -> list[tuple[int, int]]:
    """(access token, refresh token) statuses of each session the logins opened (only those
    whose token carries ``version``, i.e. that read the user row before the change, if given)."""
    survivors = []
    for reply in await asyncio.gather(*futures):
        if reply.status == 200:
            token = reply.data["access_token"]
            if (
                version is not None
                and jwt.decode(token, options={"verify_signature": False})["ver"] != version
            ):
                continue  # a login that began after the change: a new session, rightly
            used = await tenant.admin.as_user(token).call("GET", "/api/v1/users")
            refreshed = await tenant.admin.call(
                "POST", "/api/v1/auth/refresh", {"refresh_token": reply.data["refresh_token"]}
            )
            survivors.append((used.status, refreshed.status))
        else:
            assert reply.status == 401, reply.body
    return survivors


async def test_a_login_in_flight_does_not_outlive_a_password_change(tenant, from_address):
    """A login checked the password against the user row it read before hashing and opened its
    session after: one in flight while the owner changed the password opened a session the
    change never ended (PostgreSQL: two of four thieves kept full access and refresh)."""
    row = await add_user(tenant, "admin")
    owner = tenant.admin.as_user((await tenant.admin.login(row["email"]))["access_token"])
    futures = await _logins_in_flight(from_address, row["email"], 1)
    changed = await owner.call(
        "POST", CHANGE, {"current_password": PASSWORD, "new_password": "the owner's new one"}
    )
    assert changed.status == 200, changed.body
    assert all(s == (401, 401) for s in await _surviving(tenant, futures))


async def test_a_login_in_flight_does_not_outlive_a_disable(tenant, from_address):
    row = await add_user(tenant, "admin")
    before = await tenant.admin.login(row["email"])
    version = jwt.decode(before["access_token"], options={"verify_signature": False})["ver"]
    futures = await _logins_in_flight(from_address, row["email"], 11)
    disabled = await tenant.admin.call("PATCH", f"/api/v1/users/{row['id']}", {"active": False})
    assert disabled.status == 200, disabled.body
    enabled = await tenant.admin.call("PATCH", f"/api/v1/users/{row['id']}", {"active": True})
    assert enabled.status == 200, enabled.body
    # Enabling the user again revives no session, not even one a login opened meanwhile.
    assert all(s == (401, 401) for s in await _surviving(tenant, futures, version))


async def test_a_stale_change_password_cannot_undo_the_owners_change(tenant):
    """Two change-passwords with the same old password (a thief with a stolen token and the old
    password, and the owner): only one wins; the other is refused, not applied over it."""
    row = await add_user(tenant, "admin")
    first = tenant.admin.as_user((await tenant.admin.login(row["email"]))["access_token"])
    second = tenant.admin.as_user((await tenant.admin.login(row["email"]))["access_token"])
    replies = await asyncio.gather(
        first.call("POST", CHANGE, {"current_password": PASSWORD, "new_password": "first's one"}),
        second.call("POST", CHANGE, {"current_password": PASSWORD, "new_password": "second's one"}),
    )
    # The loser is refused: 403 if it got past its session check before the winner ended its
    # session, 401 if after.
    assert sorted(r.status for r in replies) in ([200, 401], [200, 403]), [r.body for r in replies]
    winner = "first's one" if replies[0].status == 200 else "second's one"
    loser = "second's one" if replies[0].status == 200 else "first's one"
    assert (await login(tenant.admin, row["email"], winner)).status == 200
    assert (await login(tenant.admin, row["email"], loser)).status == 401


async def test_a_temporary_password_expires_inside_its_session_too(tenant, cloud):
    """A temporary password opens change-password for 24 h: a login after that is refused, but
    a session opened with it before could be refreshed for 30 days and then still set a password
    with the expired temporary one."""
    row = await add_user(tenant, "admin")
    reset = (await tenant.admin.call("POST", f"/api/v1/users/{row['id']}/password-reset")).data
    tokens = (await login(tenant.admin, row["email"], reset["temporary_password"])).data
    async with cloud.engine.begin() as conn:  # a day passes
        await conn.execute(
            t.users.update()
            .where(t.users.c.id == row["id"])
            .values(password_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    refreshed = await tenant.admin.call(
        "POST", "/api/v1/auth/refresh", {"refresh_token": tokens["refresh_token"]}
    )
    assert refreshed.status == 401, refreshed.body
    changed = await tenant.admin.as_user(tokens["access_token"]).call(
        "POST",
        CHANGE,
        {"current_password": reset["temporary_password"], "new_password": "set too late"},
    )
    assert changed.status == 401, changed.body
    assert (await login(tenant.admin, row["email"], "set too late")).status == 401


async def test_a_burst_of_right_and_wrong_passwords_for_one_account_is_never_a_500(
    tenant, from_address
):
    """A success takes back its count on the throttle rows while other attempts of the same
    account and address reserve theirs: the two locked the rows in different orders, and on
    PostgreSQL a burst of right and wrong passwords (the user's script next to a guesser)
    deadlocked into 500s."""
    for n in range(3):
        row = await add_user(tenant, "viewer")
        client = from_address(f"127.0.7.{n + 1}")
        replies = await asyncio.gather(
            *(login(client, row["email"], PASSWORD if i % 2 else "wrong") for i in range(16))
        )
        assert {r.status for r in replies} <= {200, 401, 429}, [
            r.body for r in replies if r.status >= 500
        ][:1]
