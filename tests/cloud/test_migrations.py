"""The Alembic migrations build exactly the schema the code queries, on both databases."""

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from cloud.db.engine import create_engine
from cloud.db.migrate import upgrade
from cloud.db.schema import metadata


async def test_migrations_match_schema(settings):
    engine = create_engine(settings.database_url)
    try:
        await upgrade(engine)
        await upgrade(engine)  # idempotent at head

        def diff(conn: sa.Connection) -> list:
            return compare_metadata(MigrationContext.configure(conn), metadata)

        async with engine.connect() as conn:
            assert await conn.run_sync(diff) == []
            version = await conn.scalar(sa.text("SELECT version_num FROM alembic_version"))
            assert version == "0006"
            if engine.dialect.name == "sqlite":
                assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
                assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
    finally:
        await engine.dispose()
