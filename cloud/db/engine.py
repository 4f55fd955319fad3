"""Creating the async engine for SQLite (WAL, foreign keys, immediate write locks) or Postgres,
and the read path's connections (SQLite: no write lock; Postgres: no ping per checkout)."""

import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from cloud.errors import ConfigurationError

# Execution option marking a connection that only reads (see ``read_connection``).
READ_ONLY = "cloud_read_only"
# Its value for a connection that runs one statement (``read_rows``): no transaction at all.
SINGLE_STATEMENT = "single_statement"
# A pooled Postgres connection older than this is replaced at checkout (server-side idle
# timeouts, failovers); a connection found dead at use is handled by ``read_rows``' one retry.
PG_POOL_RECYCLE_S = 1800


class ReadOnlyViolation(RuntimeError):
    """A write was attempted on a connection opened with ``read_connection``."""


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def create_engine(database_url: str) -> AsyncEngine:
    try:
        url = make_url(database_url)
    except sa.exc.ArgumentError as exc:
        raise ConfigurationError(f"bad database url: {exc}") from exc
    if url.get_backend_name() == "sqlite":
        engine = _sqlite_engine(url)
    elif url.get_backend_name() == "postgresql":
        # No pool_pre_ping: it cost a round trip on every checkout (two per authenticated read).
        # Every authenticated request's first statement is the revocation check, run through
        # ``read_rows``, which retries once when the connection turns out dead; SQLAlchemy then
        # invalidates the whole pool (every connection older than the failure), so the request's
        # own writes get fresh connections.
        # The same 20 connections at most as before (10 + 10 overflow), all kept: an overflow
        # connection was closed at checkin, so under load every request or so opened a new one
        # (a backend process forked by the server).
        engine = create_async_engine(
            url, pool_size=20, max_overflow=0, pool_recycle=PG_POOL_RECYCLE_S
        )
    else:
        raise ConfigurationError(f"unsupported database backend {url.get_backend_name()!r}")
    _guard_read_only(engine)
    return engine


def _guard_read_only(engine: AsyncEngine) -> None:
    @sa.event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _refuse_writes(
        conn: sa.Connection, _cursor: Any, statement: str, _params: Any, context: Any, _many: bool
    ) -> None:
        # A read connection on SQLite holds no write lock: a write there could fail with
        # SQLITE_BUSY instead of waiting. Refuse it outright, on both backends.
        if conn.get_execution_options().get(READ_ONLY) and (
            context is None
            or context.isinsert
            or context.isupdate
            or context.isdelete
            or not statement.lstrip()[:6].upper().startswith(("SELECT", "WITH", "BEGIN"))
        ):
            raise ReadOnlyViolation(f"write on a read-only connection: {statement[:60]!r}")


@contextlib.asynccontextmanager
async def read_connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for reads only (writes raise ``ReadOnlyViolation``). On SQLite its
    transaction is a plain deferred ``BEGIN``: a snapshot of the WAL, never the write lock, so
    reads do not queue behind a writer (nor writers behind reads)."""
    async with engine.connect() as conn:
        await conn.execution_options(**{READ_ONLY: True})
        yield conn


async def read_rows(
    engine: AsyncEngine, statement: sa.Executable, params: Mapping[str, Any] | None = None
) -> list[sa.Row[Any]]:
    """One read statement's rows on a read connection. A connection found dead (a Postgres
    restart, an idle connection dropped by the server) is retried once on a fresh one: a read is
    safe to repeat."""
    for attempt in (1, 2):
        try:
            async with engine.connect() as conn:
                # One statement needs no transaction around it (it sees one snapshot on both
                # backends): on Postgres no BEGIN and ROLLBACK round trips, on SQLite no BEGIN.
                if is_sqlite(engine):
                    await conn.execution_options(**{READ_ONLY: SINGLE_STATEMENT})
                else:
                    await conn.execution_options(
                        **{READ_ONLY: SINGLE_STATEMENT, "isolation_level": "AUTOCOMMIT"}
                    )
                result = await conn.execute(statement, params or {})
                return list(result.all())
        except sa.exc.DBAPIError as exc:
            if attempt == 2 or not exc.connection_invalidated:
                raise
    raise AssertionError("unreachable")


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
        read_only = conn.get_execution_options().get(READ_ONLY)
        if read_only == SINGLE_STATEMENT:
            # One read statement (read_rows) is its own transaction in SQLite.
            return
        if read_only:
            # A read-only transaction (read_connection): WAL readers take no write lock and see
            # one consistent snapshot; writes on it are refused by _guard_read_only.
            conn.exec_driver_sql("BEGIN")
            return
        # A deferred transaction that later writes can fail at once with SQLITE_BUSY instead of
        # waiting; taking the write lock up front makes busy_timeout apply.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
