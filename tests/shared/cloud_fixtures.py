"""Fixtures for the cloud tests: a real CloudServer on ephemeral ports, on SQLite and Postgres.

tests/cloud/conftest.py re-exports the fixtures; other suites import what they need from here
(``cloud_test_settings`` and ``scratch_postgres`` for clouds of their own)."""

import asyncio
import contextlib
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from polling import wait_for

from cloud.auth.passwords import Passwords
from cloud.bootstrap import create_tenant_with_admin
from cloud.server import CloudServer
from cloud.settings import CloudSettings

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
CHEAP_PASSWORDS = Passwords(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "correct horse battery"
JWT_SECRET = "test-secret-" + "x" * 40
# Fixed like the JWT secret: the Postgres database is shared by every test of the session.
MASTER_KEYS = "test:" + "ab" * 32


def _pg_admin(sql: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@contextlib.contextmanager
def scratch_postgres(prefix: str = "vending_test") -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped afterwards; yields its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_sqlalchemy_url(name: str) -> str:
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


def cloud_test_settings(database_url: str, data_dir: Path, **overrides: Any) -> CloudSettings:
    """A cloud on ephemeral ports with cheap password hashing and quick workers."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": data_dir,
        "http_port": 0,
        "sync_port": 0,
        "jwt_secret": JWT_SECRET,
        "password_hash_time_cost": 1,
        "password_hash_memory_cost": 8,
        "password_hash_parallelism": 1,
        "sandbox_approve_delay_s": 0.3,
        # Most tests pay with the sandbox; tests/security/test_sec_sandbox_off.py runs without.
        "sandbox_payments": True,
        "worker_poll_interval_s": 0.2,
        "channel_poll_interval_s": 0.2,
    }
    return CloudSettings(**(values | overrides))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with scratch_postgres() as name:
        yield postgres_sqlalchemy_url(name)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> CloudSettings:
    return cloud_test_settings(db_url, tmp_path / "cloud-data", master_keys=MASTER_KEYS)


@pytest.fixture
async def cloud(settings: CloudSettings) -> AsyncIterator[CloudServer]:
    async with CloudServer(settings) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@dataclass
class Reply:
    status: int
    body: Any

    @property
    def data(self) -> Any:
        assert self.body["success"] is True, self.body
        return self.body["data"]

    @property
    def error(self) -> dict[str, Any]:
        assert self.body["success"] is False, self.body
        err = self.body["error"]
        assert set(err) == {"code", "message", "details", "timestamp", "requestId"}
        return dict(err)


class ApiClient:
    def __init__(self, session: aiohttp.ClientSession, base: str, token: str | None = None):
        self.session, self.base, self.token = session, base, token

    async def call(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        data: str | bytes | None = None,
        token: str | None = None,
        params: dict[str, str] | None = None,
    ) -> Reply:
        headers = {}
        bearer = token if token is not None else self.token
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        if data is not None:
            headers["Content-Type"] = "application/json"
        async with self.session.request(
            method, self.base + path, json=json, data=data, headers=headers, params=params
        ) as resp:
            assert resp.content_type == "application/json", await resp.text()
            return Reply(resp.status, await resp.json())

    async def login(self, email: str, password: str = PASSWORD) -> dict[str, Any]:
        reply = await self.call(
            "POST", "/api/v1/auth/login", {"email": email, "password": password}
        )
        assert reply.status == 200, reply.body
        return dict(reply.data)

    def as_user(self, token: str) -> "ApiClient":
        return ApiClient(self.session, self.base, token)


@dataclass
class Tenant:
    id: str
    email: str
    admin: ApiClient

    async def site(self, name: str = "Main site") -> dict[str, Any]:
        reply = await self.admin.call("POST", "/api/v1/sites", {"name": name})
        assert reply.status == 201, reply.body
        return dict(reply.data)

    async def machine(
        self, site_id: str, name: str = "M1", catalog: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        if catalog is None:
            catalog = [
                {"slot": "A1", "name": "Cola", "price": 2500, "quantity": 5, "category": "drinks"},
                {"slot": "A2", "name": "Chips", "price": 1000, "quantity": 3},
            ]
        reply = await self.admin.call(
            "POST",
            "/api/v1/machines/onboard",
            {"name": name, "site_id": site_id, "catalog": catalog},
        )
        assert reply.status == 201, reply.body
        return dict(reply.data)

    async def user(self, role: str) -> ApiClient:
        email = f"{role}-{uuid.uuid4().hex[:8]}@example.com"
        reply = await self.admin.call(
            "POST", "/api/v1/users", {"email": email, "password": PASSWORD, "role": role}
        )
        assert reply.status == 201, reply.body
        tokens = await self.admin.login(email)
        return self.admin.as_user(tokens["access_token"])


@pytest.fixture
def api(cloud: CloudServer, http: aiohttp.ClientSession) -> ApiClient:
    return ApiClient(http, cloud.api_url)


@pytest.fixture
def make_tenant(cloud: CloudServer, api: ApiClient) -> Any:
    async def make(name: str | None = None) -> Tenant:
        suffix = uuid.uuid4().hex[:8]
        email = f"admin-{suffix}@example.com"
        tenant_name = name or f"tenant-{suffix}"
        if name == "via-server":
            tenant_id = await cloud.create_tenant(f"{tenant_name}-{suffix}", email, PASSWORD)
        else:
            tenant_id = await create_tenant_with_admin(
                cloud.engine, tenant_name, email, PASSWORD, passwords=CHEAP_PASSWORDS
            )
        tokens = await api.login(email)
        return Tenant(tenant_id, email, api.as_user(tokens["access_token"]))

    return make


@pytest.fixture
async def tenant(make_tenant: Any) -> Tenant:
    return await make_tenant()


def make_key_and_csr(
    common_name: str = "ignored-subject",
) -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


def client_ssl(
    ca_pem: str,
    tmp: Path,
    cert_pem: str | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem)
    if cert_pem is not None and key is not None:
        stem = uuid.uuid4().hex
        cert_path, key_path = tmp / f"{stem}.crt", tmp / f"{stem}.key"
        cert_path.write_text(cert_pem)
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        context.load_cert_chain(cert_path, key_path)
    return context


@dataclass
class GatewayClient:
    """What the gateway's sync client does, reduced to the calls the tests need."""

    id: str
    site_id: str
    sync_url: str
    session: aiohttp.ClientSession

    async def call(
        self, method: str, path: str, json: Any = None, params: dict[str, str] | None = None
    ) -> Reply:
        async with self.session.request(
            method, self.sync_url + path, json=json, params=params
        ) as resp:
            return Reply(resp.status, await resp.json())

    async def push(self, events: list[dict[str, Any]]) -> Reply:
        return await self.call("POST", "/sync/v1/events", {"events": events})

    async def pull(self, cursor: int) -> Reply:
        return await self.call("GET", "/sync/v1/state", params={"cursor": str(cursor)})


@pytest.fixture
async def enroll(cloud: CloudServer, tenant: Tenant, tmp_path: Path) -> AsyncIterator[Any]:
    sessions: list[aiohttp.ClientSession] = []

    async def do_enroll(site_id: str, owner: Tenant = tenant) -> GatewayClient:
        reply = await owner.admin.call("POST", f"/api/v1/sites/{site_id}/enrollment-tokens")
        assert reply.status == 201, reply.body
        key, csr = make_key_and_csr()
        enrolled = await owner.admin.call(
            "POST",
            "/api/v1/gateways/enroll",
            {"token": reply.data["token"], "csr_pem": csr, "name": "gw"},
            token="",
        )
        assert enrolled.status == 201, enrolled.body
        data = enrolled.data
        context = client_ssl(data["ca_pem"], tmp_path, data["certificate_pem"], key)
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
        sessions.append(session)
        return GatewayClient(data["gateway_id"], data["site_id"], data["sync_url"], session)

    yield do_enroll
    for session in sessions:
        await session.close()


@pytest.fixture
def poll() -> Any:
    return wait_for


@pytest.fixture
def jwt_secret() -> str:
    return JWT_SECRET


@pytest.fixture
def password() -> str:
    return PASSWORD


@pytest.fixture(name="make_key_and_csr")
def _make_key_and_csr_fixture() -> Any:
    return make_key_and_csr


@pytest.fixture(name="client_ssl")
def _client_ssl_fixture() -> Any:
    return client_ssl
