"""The cloud attacker behind the reverse proxy a deployment puts in front of the API. The
throttle keys on the client address, which was always the TCP peer: behind a proxy that is the
proxy for everyone, so one client's 20 wrong passwords locked every user's login (429 for up to
15 minutes, again and again). With ``trusted_proxies`` the address is the one the proxy saw, taken
from the right of X-Forwarded-For; a client that is not a trusted proxy cannot set it."""

# ruff: noqa: F811 - pytest fixtures are imported by name and then taken as parameters
import inspect
from typing import Any

import pytest
from sec_accounts_support import (  # noqa: F401
    ADDRESS_FREE,
    PAIR_FREE,
    PASSWORD,
    THROTTLE,
    add_user,
    api,
    cloud,
    cloudconf,
    db_url,
    from_address,
    http,
    make_tenant,
    postgres_url,
    tenant,
)

from cloud.settings import CloudSettings

PROXY = "127.0.0.1"  # the test's own connections come from here: they play the proxy


@pytest.fixture
def settings(request: pytest.FixtureRequest, db_url: str) -> CloudSettings:
    base = cloudconf.settings.__wrapped__
    args = {name: request.getfixturevalue(name) for name in inspect.signature(base).parameters}
    return base(**args).model_copy(update=THROTTLE | {"trusted_proxies": [f"{PROXY}/32"]})


async def _login(client: Any, email: str, password: str, forwarded: str | None) -> int:
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    async with client.session.post(
        client.base + "/api/v1/auth/login",
        json={"email": email, "password": password},
        headers=headers,
    ) as resp:
        return resp.status


async def _addresses(tenant: Any, email: str) -> list[str]:
    rows = (await tenant.admin.call("GET", "/api/v1/audit/logins")).data
    return [r["client_address"] for r in rows if r["email"] == email]


async def test_one_client_behind_the_proxy_cannot_lock_everyone_out(tenant):
    user = await add_user(tenant, "viewer")
    statuses = [
        await _login(tenant.admin, f"user{i}@example.com", "Winter2026!", "198.51.100.7")
        for i in range(ADDRESS_FREE + 1)
    ]
    assert statuses[-1] == 429  # the sprayer is locked ...
    # ... and only the sprayer: another client of the same proxy logs in.
    assert await _login(tenant.admin, user["email"], PASSWORD, "203.0.113.9") == 200
    assert await _addresses(tenant, user["email"]) == ["203.0.113.9"]


async def test_a_forwarded_address_the_client_wrote_itself_is_not_believed(tenant, from_address):
    user = await add_user(tenant, "viewer")
    # Through the proxy: the client's own X-Forwarded-For comes first, the proxy appends the
    # address it saw; the rightmost address that is not a trusted proxy is the client's.
    spoofed = "203.0.113.9, 198.51.100.8"
    assert await _login(tenant.admin, user["email"], "wrong", spoofed) == 401
    # Straight to the cloud, not from a trusted proxy: the header is ignored.
    direct = from_address("127.0.0.2")
    assert await _login(direct, user["email"], "wrong", "203.0.113.9") == 401
    assert await _addresses(tenant, user["email"]) == ["127.0.0.2", "198.51.100.8"]


async def test_a_malformed_forwarded_header_falls_back_to_the_proxy(tenant):
    user = await add_user(tenant, "viewer")
    assert await _login(tenant.admin, user["email"], "wrong", "not an address, 999.1.1.1") == 401
    assert await _login(tenant.admin, user["email"], "wrong", None) == 401
    assert await _addresses(tenant, user["email"]) == [PROXY, PROXY]


async def test_an_ipv6_client_is_one_address_per_64(tenant):
    """An IPv6 client holds a whole /64 (2**64 addresses): keyed per address, a sprayer and a
    guesser got fresh free tries from each one. The throttle keys on the /64."""
    victim = await add_user(tenant, "viewer")
    statuses = [
        await _login(tenant.admin, victim["email"], f"guess {n}", f"2001:db8:0:1::{n:x}")
        for n in range(1, PAIR_FREE + 2)
    ]
    assert statuses == [401] * PAIR_FREE + [429]
    statuses = [
        await _login(tenant.admin, f"user{n}@example.com", "Winter2026!", f"2001:db8:0:2::{n:x}")
        for n in range(1, ADDRESS_FREE + 2)
    ]
    assert statuses == [401] * ADDRESS_FREE + [429]
    # Another /64 is another client. The audit keeps each attempt's full address, and names
    # the /64 on the (once a minute) refusal rows.
    assert await _login(tenant.admin, victim["email"], PASSWORD, "2001:db8:0:3::1") == 200
    assert (await _addresses(tenant, victim["email"]))[:3] == [
        "2001:db8:0:3::1",
        "2001:db8:0:1::/64",
        "2001:db8:0:1::5",
    ]
