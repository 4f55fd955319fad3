"""Creating the async engine for SQLite (WAL, foreign keys, immediate write locks) or Postgres."""

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from cloud.errors import ConfigurationError


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def create_engine(database_url: str) -> AsyncEngine:
    try:
        url = make_url(database_url)
    except sa.exc.ArgumentError as exc:
        raise ConfigurationError(f"bad database url: {exc}") from exc
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    if url.get_backend_name() == "postgresql":
        return create_async_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)
    raise ConfigurationError(f"unsupported database backend {url.get_backend_name()!r}")


def _sqlite_engine(url: sa.URL) -> AsyncEngine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": 15})

    @sa.event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" hook own transaction start (see below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=15000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # Sealing a row written in plaintext must not leave the plaintext in a freed cell.
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()

    @sa.event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # A deferred transaction that later writes can fail at once with SQLITE_BUSY instead of
        # waiting; taking the write lock up front makes busy_timeout apply.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
