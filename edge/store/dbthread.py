"""A thread that owns one SQLite connection and runs jobs for the event loop.

The writer runs every job inside a transaction; because it is the only writer, transactions never
wait on each other and the event loop never touches the disk.
"""

import asyncio
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
Job = Callable[[sqlite_utils.Database], Any]
_STOP = object()


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
            while True:
                item = self._jobs.get()
                if item is _STOP:
                    break
                job, future, loop = item
                try:
                    if self._transactional:
                        with db.atomic():
                            result = job(db)
                    else:
                        result = job(db)
                except sqlite3.Error as exc:
                    # Disk full, I/O error, corruption: callers see one narrow error type.
                    error = StoreError(f"database error: {exc}")
                    error.__cause__ = exc
                    loop.call_soon_threadsafe(_set_exception, future, error)
                except BaseException as exc:
                    loop.call_soon_threadsafe(_set_exception, future, exc)
                else:
                    loop.call_soon_threadsafe(_set_result, future, result)
        finally:
            db.close()


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
