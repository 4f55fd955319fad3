"""Fixtures for the accounts attack tests: the real cloud from tests/cloud (SQLite and PostgreSQL),
with login throttling tuned so locks are long enough to observe, and clients that connect from
other loopback addresses (127.0.0.2, ...) to play a second client address."""

import importlib.util
import inspect
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cloud.settings import CloudSettings

_CONFTEST = Path(__file__).resolve().parent.parent / "cloud" / "conftest.py"
_spec = importlib.util.spec_from_file_location("sec_accounts_cloud_conftest", _CONFTEST)
assert _spec is not None and _spec.loader is not None
cloudconf = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = cloudconf
_spec.loader.exec_module(cloudconf)

# The fixtures the tests use, re-exported (a test module imports them by name).
postgres_url = cloudconf.postgres_url
db_url = cloudconf.db_url
cloud = cloudconf.cloud
http = cloudconf.http
api = cloudconf.api
make_tenant = cloudconf.make_tenant
tenant = cloudconf.tenant
ApiClient = cloudconf.ApiClient
Tenant = cloudconf.Tenant
PASSWORD: str = cloudconf.PASSWORD
JWT_SECRET: str = cloudconf.JWT_SECRET

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
def settings(request: pytest.FixtureRequest, db_url: str) -> CloudSettings:
    """tests/cloud's settings (whatever they need), with the throttle above. ``db_url`` is
    named here so the tests run once per database."""
    base = cloudconf.settings.__wrapped__
    args = {name: request.getfixturevalue(name) for name in inspect.signature(base).parameters}
    return base(**args).model_copy(update=THROTTLE)


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
