"""The authenticated read path: reads run without SQLite's write lock (they do not queue behind a
writer), read connections refuse writes, and revocation stays immediate with the verified-token
cache (a disabled user, an ended session, a demoted role are refused on the very next request)."""

import asyncio
import uuid

import asyncpg
import pytest
import sqlalchemy as sa
from cloud_fixtures import PASSWORD
from polling import wait_for

from cloud.db import schema as t
from cloud.db.engine import ReadOnlyViolation, create_engine, read_connection, read_rows

# Far below the 15 s busy_timeout: a read queued behind the held write lock could not finish
# before it; it only guards against hanging the suite.
READ_GUARD_S = 10


async def test_reads_complete_while_a_writer_holds_the_write_lock(cloud, tenant):
    site = await tenant.site()
    machine = (await tenant.machine(site["id"], name="before"))["machine"]
    # The Postgres database is shared by the session's tests: this tenant's machines only.
    names_query = sa.select(t.machines.c.name).where(t.machines.c.tenant_id == tenant.id)
    async with cloud.engine.begin() as writer:
        # On SQLite this transaction holds the database's write lock (BEGIN IMMEDIATE) until it
        # ends, which is after the reads below have returned.
        await writer.execute(
            t.machines.update().where(t.machines.c.id == machine["id"]).values(name="uncommitted")
        )
        reply = await asyncio.wait_for(tenant.admin.call("GET", "/api/v1/machines"), READ_GUARD_S)
        assert reply.status == 200, reply.body
        # The read saw the last committed state, not the writer's.
        assert [m["name"] for m in reply.data] == ["before"]
        rows = await asyncio.wait_for(read_rows(cloud.engine, names_query), READ_GUARD_S)
        assert [r.name for r in rows] == ["before"]
        async with read_connection(cloud.engine) as conn:
            names = await asyncio.wait_for(conn.scalars(names_query), READ_GUARD_S)
            assert list(names) == ["before"]
        assert writer.in_transaction()
    reply = await tenant.admin.call("GET", "/api/v1/machines")
    assert [m["name"] for m in reply.data] == ["uncommitted"]


async def test_a_read_connection_refuses_writes(cloud, tenant):
    async with read_connection(cloud.engine) as conn:
        with pytest.raises(ReadOnlyViolation):
            await conn.execute(t.machines.update().values(name="x"))
        with pytest.raises(ReadOnlyViolation):
            await conn.exec_driver_sql("DELETE FROM machines")
    with pytest.raises(ReadOnlyViolation):
        await read_rows(cloud.engine, t.machines.delete())


async def _user(tenant, role: str):
    email = f"{role}-{uuid.uuid4().hex[:8]}@example.com"
    reply = await tenant.admin.call(
        "POST", "/api/v1/users", {"email": email, "password": PASSWORD, "role": role}
    )
    assert reply.status == 201, reply.body
    tokens = await tenant.admin.login(email)
    return reply.data["id"], tenant.admin.as_user(tokens["access_token"]), tokens


async def test_disabling_a_user_refuses_the_next_read(tenant):
    user_id, user, _ = await _user(tenant, "viewer")
    for _ in range(2):  # the second read is served from the verified-token cache
        assert (await user.call("GET", "/api/v1/machines")).status == 200
    reply = await tenant.admin.call("PATCH", f"/api/v1/users/{user_id}", {"active": False})
    assert reply.status == 200, reply.body
    reply = await user.call("GET", "/api/v1/machines")
    assert reply.status == 401
    assert reply.error["code"] == "unauthorized"


async def test_logout_refuses_the_next_read(tenant):
    _, user, tokens = await _user(tenant, "viewer")
    for _ in range(2):
        assert (await user.call("GET", "/api/v1/machines")).status == 200
    body = {"refresh_token": tokens["refresh_token"]}
    assert (await user.call("POST", "/api/v1/auth/logout", body)).status == 200
    reply = await user.call("GET", "/api/v1/machines")
    assert reply.status == 401
    assert reply.error["message"] == "session has ended"


async def test_demotion_applies_to_the_next_request(tenant):
    user_id, user, _ = await _user(tenant, "operator")
    site = await tenant.site()
    machine = (await tenant.machine(site["id"]))["machine"]
    path = f"/api/v1/machines/{machine['id']}/config"
    for _ in range(2):
        assert (await user.call("PUT", path, {"config": {"a": 1}})).status == 200
    reply = await tenant.admin.call("PATCH", f"/api/v1/users/{user_id}", {"role": "viewer"})
    assert reply.status == 200, reply.body
    assert (await user.call("PUT", path, {"config": {"a": 2}})).status == 403
    assert (await user.call("GET", "/api/v1/machines")).status == 200


async def test_a_read_retries_once_on_a_connection_the_server_dropped(cloud, settings):
    if cloud.engine.dialect.name != "postgresql":
        pytest.skip("pooled connections dropped by the server: Postgres only")
    # An engine of its own: no background worker finds the dead connection first.
    engine = create_engine(settings.database_url)
    dsn = settings.database_url.replace("postgresql+asyncpg://", "postgresql://")
    admin = await asyncpg.connect(dsn)
    try:
        [(pid,)] = await read_rows(engine, sa.select(sa.func.pg_backend_pid()))
        # What a server restart or an idle timeout does to a pooled connection (no pre-ping).
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)

        async def gone() -> bool:
            return not await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid
            )

        await wait_for(gone)
        [(fresh,)] = await read_rows(engine, sa.select(sa.func.pg_backend_pid()))
        assert fresh != pid
    finally:
        await admin.close()
        await engine.dispose()


async def test_reads_survive_postgres_dropping_pooled_connections(cloud, tenant, settings):
    if cloud.engine.dialect.name != "postgresql":
        pytest.skip("pooled connections dropped by the server: Postgres only")
    assert (await tenant.admin.call("GET", "/api/v1/machines")).status == 200
    dsn = settings.database_url.replace("postgresql+asyncpg://", "postgresql://")
    admin = await asyncpg.connect(dsn)
    try:
        ended = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()
    assert ended >= 1
    for _ in range(3):
        reply = await tenant.admin.call("GET", "/api/v1/machines")
        assert reply.status == 200, reply.body
