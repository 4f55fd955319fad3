"""Fixtures for the accounts attack tests: the real cloud from tests/cloud (SQLite and PostgreSQL),
with login throttling tuned so locks are long enough to observe, and clients that connect from
other loopback addresses (127.0.0.2, ...) to play a second client address."""

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import cloud_fixtures as cloudconf  # the whole module, for names not re-exported below
import pytest
from cloud_fixtures import (
    JWT_SECRET,
    MASTER_KEYS,
    PASSWORD,
    ApiClient,
    Tenant,
    api,
    cloud,
    cloud_test_settings,
    db_url,
    http,
    make_tenant,
    postgres_url,
    tenant,
)

from cloud.settings import CloudSettings

# The fixtures and names the tests use, re-exported (a test module imports them by name).
__all__ = [
    "JWT_SECRET",
    "MASTER_KEYS",
    "PASSWORD",
    "ApiClient",
    "Tenant",
    "api",
    "cloud",
    "cloudconf",
    "db_url",
    "http",
    "make_tenant",
    "postgres_url",
    "tenant",
]

# A lock after the free failures lasts LOCK_S seconds (doubling), so a test sees it held.
LOCK_S = 30.0
PAIR_FREE = 5
ADDRESS_FREE = 12
ACCOUNT_FREE = 10
ACCOUNT_CAP_S = 20


THROTTLE = {
    "login_lockout_base_s": LOCK_S,
    "login_pair_free_failures": PAIR_FREE,
    "login_address_free_failures": ADDRESS_FREE,
    "login_account_free_failures": ACCOUNT_FREE,
    "login_account_lockout_max_s": ACCOUNT_CAP_S,
}


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> CloudSettings:
    """tests/cloud's settings with the throttle above."""
    return cloud_test_settings(db_url, tmp_path / "cloud-data", master_keys=MASTER_KEYS, **THROTTLE)


@pytest.fixture
async def from_address(cloud: Any) -> AsyncIterator[Any]:
    """``from_address("127.0.0.2")``: an ApiClient whose connections come from that address."""
    sessions: list[aiohttp.ClientSession] = []

    def make(address: str) -> Any:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(local_addr=(address, 0), force_close=True)
        )
        sessions.append(session)
        return ApiClient(session, cloud.api_url)

    yield make
    for session in sessions:
        await session.close()


async def add_user(
    owner: Any, role: str, email: str | None = None, password: str = PASSWORD
) -> dict[str, Any]:
    """Creates a user in ``owner``'s tenant; returns its row plus its e-mail."""
    email = email or f"{role}-{uuid.uuid4().hex[:8]}@example.com"
    reply = await owner.admin.call(
        "POST", "/api/v1/users", {"email": email, "password": password, "role": role}
    )
    assert reply.status == 201, reply.body
    return dict(reply.data)


async def login(client: Any, email: str, password: str = PASSWORD, **extra: Any) -> Any:
    return await client.call(
        "POST", "/api/v1/auth/login", {"email": email, "password": password, **extra}
    )
