"""Migration 0003 rebuilds ``users`` (per-tenant e-mails, token versions) on a database that
already holds users and their refresh tokens, without losing or orphaning a row."""

# ruff: noqa: F811 - pytest fixtures are imported by name and then taken as parameters
import sqlalchemy as sa
from sec_accounts_support import db_url, postgres_url  # noqa: F401

from cloud.db.engine import create_engine
from cloud.db.migrate import upgrade
from cloud.db.times import utcnow


async def test_upgrade_keeps_users_and_their_tokens(db_url):
    engine = create_engine(db_url)
    now = utcnow()
    try:
        await upgrade(engine, "0002")
        async with engine.begin() as conn:
            await conn.execute(
                sa.text("INSERT INTO tenants (id, name, created_at) VALUES ('t1', 'T', :now)"),
                {"now": now},
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO users (id, tenant_id, email, password_hash, role, active,"
                    " created_at) VALUES ('u1', 't1', 'a@example.com', 'h', 'admin', true, :now)"
                ),
                {"now": now},
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, expires_at,"
                    " created_at) VALUES ('r1', 'u1', 'f1', 'x', :now, :now)"
                ),
                {"now": now},
            )
        await upgrade(engine, "0003")
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.text("SELECT email, token_version, must_change_password FROM users")
                )
            ).one()
            assert tuple(row) == ("a@example.com", 0, False)
            assert await conn.scalar(sa.text("SELECT user_id FROM refresh_tokens")) == "u1"
            # The open refresh-token family became an open session: nobody is logged out.
            session = (
                await conn.execute(sa.text("SELECT id, user_id, revoked_at FROM user_sessions"))
            ).one()
            assert tuple(session) == ("f1", "u1", None)
            if engine.dialect.name == "sqlite":
                assert (await conn.exec_driver_sql("PRAGMA foreign_key_check")).all() == []
        await upgrade(engine, "0002")  # and back
        await upgrade(engine, "0003")
    finally:
        await engine.dispose()
