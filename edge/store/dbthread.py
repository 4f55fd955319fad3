"""A thread that owns one SQLite connection and runs jobs for the event loop.

The writer runs every job inside a transaction; because it is the only writer, transactions never
wait on each other and the event loop never touches the disk. It commits by groups: the jobs
waiting when a transaction starts all run in it, each in its own savepoint, and one COMMIT (one
fsync with ``synchronous=FULL``) makes them durable together. No job's caller hears of its result
before that COMMIT succeeded.
"""

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from edge.errors import StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")
# The most jobs one transaction takes; bounds how long a group holds its first job's answer.
MAX_GROUP = 128
Job = Callable[[sqlite_utils.Database], Any]
_STOP = object()
_ENDED = "database error: the transaction ended inside a job"


def open_database(path: Path) -> sqlite_utils.Database:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA foreign_keys = ON")
    # FULL keeps a committed money event even across a power cut (WAL alone would allow losing
    # the last transactions with synchronous=NORMAL).
    conn.execute("PRAGMA synchronous = FULL")
    # Sealing a value that was in plaintext (m005, rekey) must not leave it in a freed cell.
    conn.execute("PRAGMA secure_delete = ON")
    return sqlite_utils.Database(conn, execute_plugins=False)


class DbThread:
    """Runs callables on a dedicated thread with its own connection."""

    def __init__(self, path: Path, name: str, *, transactional: bool) -> None:
        self._path = path
        self._name = name
        self._transactional = transactional
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._open_error: BaseException | None = None
        # Transactions committed by this (writer) thread; a group of jobs commits once.
        self.commits = 0

    def start(self, on_open: Job | None = None) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(on_open,), name=self._name, daemon=True
        )
        self._thread.start()
        self._ready.wait(timeout=30)
        if self._open_error is not None:
            # The cause's text is the operator's clue (e.g. a master key that does not match).
            raise StoreError(f"cannot open {self._path}: {self._open_error}") from self._open_error

    def stop(self) -> None:
        if self._thread is None:
            return
        self._jobs.put(_STOP)
        self._thread.join(timeout=30)
        self._thread = None

    async def run(self, job: Callable[[sqlite_utils.Database], T]) -> T:
        if self._thread is None:
            raise StoreError("store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((job, future, loop))
        return await future

    def _run(self, on_open: Job | None) -> None:
        try:
            db = open_database(self._path)
            if on_open is not None:
                on_open(db)
        except BaseException as exc:  # reported to start()
            self._open_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            stop = False
            while not stop:
                item = self._jobs.get()
                if item is _STOP:
                    break
                if not self._transactional:
                    _deliver([(item, *_outcome(item[0], db))])
                    continue
                group = [item]
                # Group commit: every job already waiting joins this transaction (no waiting
                # for more: the jobs that arrive during this commit make the next group).
                while len(group) < MAX_GROUP:
                    try:
                        item = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                        break
                    group.append(item)
                _deliver(self._run_group(db, group))
        finally:
            db.close()

    def _run_group(self, db: sqlite_utils.Database, group: list[Any]) -> list[Any]:
        """Run ``group`` in one transaction, each job in its own savepoint, and commit once.

        A job that raises rolls back its savepoint only and gets its exception; the others'
        results are delivered only after the COMMIT succeeded. When the COMMIT fails, every job
        that had succeeded gets the error and nothing of the group is kept."""
        conn = db.conn
        try:
            conn.execute("BEGIN")
        except sqlite3.Error as exc:
            error = _store_error(exc)
            return [(item, False, error) for item in group]
        outcomes: list[Any] = []
        try:
            for position, item in enumerate(group):
                conn.execute("SAVEPOINT job")
                ok, value = _outcome(item[0], db)
                outcomes.append((item, ok, value))
                if conn.in_transaction:
                    if not ok:
                        conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    continue
                # The job's error ended the whole transaction (SQLite does so on a full disk, an
                # I/O error, a RAISE(ROLLBACK)): the earlier jobs' work is gone with it. This job
                # keeps its error; the others, none of them answered yet, run again one by one.
                if len(group) == 1:
                    # A job that ended the transaction and still returned has nothing kept.
                    return [(item, False, value if not ok else StoreError(_ENDED))]
                rest = [o[0] for o in outcomes if o[1]] + group[position + 1 :]
                failed = [o for o in outcomes if not o[1]]
                return failed + [o for job in rest for o in self._run_group(db, [job])]
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # The savepoint statements or the COMMIT failed: nothing of the group is kept.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            error = _store_error(exc)
            answered = {id(o[0]) for o in outcomes}
            return [(item, False, error if ok else value) for item, ok, value in outcomes] + [
                (item, False, error) for item in group if id(item) not in answered
            ]
        self.commits += 1
        return outcomes


def _outcome(job: Job, db: sqlite_utils.Database) -> tuple[bool, Any]:
    try:
        return True, job(db)
    except sqlite3.Error as exc:
        # Disk full, I/O error, corruption: callers see one narrow error type.
        return False, _store_error(exc)
    except BaseException as exc:
        return False, exc


def _store_error(exc: sqlite3.Error) -> StoreError:
    error = StoreError(f"database error: {exc}")
    error.__cause__ = exc
    return error


def _deliver(outcomes: list[Any]) -> None:
    """Resolve the futures: one wake-up of each event loop for the whole group."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
    for (_, future, loop), ok, value in outcomes:
        by_loop.setdefault(loop, []).append((future, ok, value))
    for loop, resolved in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, resolved)
        except RuntimeError:  # the caller's loop is closed: nobody is waiting any more
            log.debug("a store job's event loop closed before its answer")


def _resolve(resolved: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in resolved:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
