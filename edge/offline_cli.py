"""What every ``vending-gateway <command>`` that works on the database from a shell shares.

Such a command reads the same settings as the gateway (``--config`` or the environment) and
works beside a running gateway: SQLite WAL lets it read while the gateway writes, and a change is
one short ``BEGIN IMMEDIATE`` transaction. Exit codes are the same for all of them: 0 done,
1 refused (the thing named does not exist or cannot be done), 2 usage or invalid settings,
3 database missing, not upgraded, locked or unreadable.
"""

import argparse
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import sqlite_utils
from pydantic import ValidationError

from edge.settings import GatewaySettings
from edge.store.dbthread import open_database

EXIT_REFUSED, EXIT_USAGE, EXIT_DATABASE = 1, 2, 3
T = TypeVar("T")


class CommandFailed(Exception):
    """What the command tells the person, and the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def config_option() -> argparse.ArgumentParser:
    """A parent parser with ``--config``, accepted before or after the subcommand."""
    config = argparse.ArgumentParser(add_help=False)
    # SUPPRESS keeps a subcommand's default from erasing a value given before it.
    config.add_argument(
        "--config", type=Path, default=argparse.SUPPRESS, help="TOML or JSON settings file"
    )
    return config


def _open(
    settings: GatewaySettings, upgraded: Callable[[sqlite_utils.Database], bool]
) -> sqlite_utils.Database:
    path = settings.db_path
    if not path.is_file():
        raise CommandFailed(f"no gateway database at {path}", EXIT_DATABASE)
    try:
        db = open_database(path)
        ready = upgraded(db)
    except sqlite3.Error as exc:
        raise CommandFailed(f"cannot read {path}: {exc}", EXIT_DATABASE) from exc
    if not ready:
        db.close()
        raise CommandFailed(
            f"{path} is from an older gateway: start the gateway once to upgrade it",
            EXIT_DATABASE,
        )
    return db


def write(db: sqlite_utils.Database, what: str, change: Callable[[], T]) -> T:
    """Run ``change`` in one immediate transaction; a database error changes nothing."""
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            result = change()
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        raise CommandFailed(f"{what} failed, nothing changed: {exc}", EXIT_DATABASE) from exc
    return result


def run(
    prog: str,
    args: argparse.Namespace,
    upgraded: Callable[[sqlite_utils.Database], bool],
    command: Callable[[sqlite_utils.Database], None],
) -> int:
    """Load the settings, open the database once it is ``upgraded``, run ``command``, and turn
    a ``CommandFailed`` into its message on stderr and its exit code."""
    try:
        try:
            settings = GatewaySettings.load(getattr(args, "config", None))
        except ValidationError as exc:
            first = exc.errors()[0]
            raise CommandFailed(
                f"invalid settings: {exc.error_count()} error(s), first: "
                f"{first['loc']} {first['msg']}",
                EXIT_USAGE,
            ) from exc
        db = _open(settings, upgraded)
        try:
            command(db)
        finally:
            db.close()
    except CommandFailed as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.code
    return 0


def has_table(name: str) -> Callable[[sqlite_utils.Database], bool]:
    def check(db: sqlite_utils.Database) -> bool:
        query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        return db.execute(query, [name]).fetchone() is not None

    return check


def has_column(table: str, column: str) -> Callable[[sqlite_utils.Database], bool]:
    def check(db: sqlite_utils.Database) -> bool:
        return column in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}

    return check
