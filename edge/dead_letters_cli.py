"""``vending-gateway dead-letters list|retry``: the gateway's sync dead letters, from a shell.

Works on the database named by the same settings as the gateway (``--config`` or the
environment), beside a running gateway: SQLite WAL lets it read while the gateway writes, and a
retry is one short write transaction (the gateway's push loop sends the event within
``sync_pull_interval_s``). Exit codes: 0 done, 1 refused (unknown or already retried id),
2 usage or invalid settings, 3 database missing, not upgraded, locked or unreadable.
"""

import argparse
import json
import sqlite3
import sys
from pathlib import Path

import sqlite_utils
from pydantic import ValidationError

from edge.settings import GatewaySettings
from edge.store import dead_letters
from edge.store.dbthread import open_database

PROG = "vending-gateway dead-letters"
EXIT_REFUSED, EXIT_USAGE, EXIT_DATABASE = 1, 2, 3


class _Failure(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _parser() -> argparse.ArgumentParser:
    config = argparse.ArgumentParser(add_help=False)
    # Accepted before or after the subcommand; SUPPRESS keeps a later default from erasing it.
    config.add_argument(
        "--config", type=Path, default=argparse.SUPPRESS, help="TOML or JSON settings file"
    )
    parser = argparse.ArgumentParser(
        prog=PROG, description="List or retry sync events the cloud refused.", parents=[config]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="open dead letters, oldest first", parents=[config])
    listing.add_argument("--all", action="store_true", help="retried ones too")
    listing.add_argument(
        "--json", action="store_true", help="one JSON object a line, payload included"
    )
    retry = commands.add_parser(
        "retry", help="put dead letters back into the outbox", parents=[config]
    )
    target = retry.add_mutually_exclusive_group(required=True)
    target.add_argument("id", nargs="?", type=int, help="dead letter id (from list)")
    target.add_argument("--all", action="store_true", help="every open dead letter")
    return parser


def _open(settings: GatewaySettings) -> sqlite_utils.Database:
    path = settings.db_path
    if not path.is_file():
        raise _Failure(f"no gateway database at {path}", EXIT_DATABASE)
    try:
        db = open_database(path)
        table = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'dead_letters'"
        ).fetchone()
    except sqlite3.Error as exc:
        raise _Failure(f"cannot read {path}: {exc}", EXIT_DATABASE) from exc
    if table is None:
        db.close()
        raise _Failure(
            f"{path} has no dead-letter table yet: start the gateway once to upgrade it",
            EXIT_DATABASE,
        )
    return db


def _list(db: sqlite_utils.Database, include_retried: bool, as_json: bool) -> None:
    letters = dead_letters.listing(db, include_retried=include_retried)
    if as_json:
        for letter in letters:
            print(json.dumps(letter.__dict__, ensure_ascii=False))
        return
    if not letters:
        print("no dead letters")
        return
    for letter in letters:
        if letter.source == dead_letters.PAYMENT:
            print(
                f"#{letter.id} {letter.state} payment confirmation not applied "
                f"({letter.event_id.removeprefix('payment:')}, {letter.last_failed_at}): "
                f"{letter.code}: {letter.error}"
            )
            continue
        print(
            f"#{letter.id} {letter.state} {letter.type} event {letter.event_id} "
            f"(seq {letter.seq}, {letter.attempts} attempt(s), last {letter.last_failed_at}): "
            f"{letter.code}: {letter.error}"
        )


def _retry(db: sqlite_utils.Database, letter_id: int | None) -> None:
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            moved = dead_letters.retry(db, None if letter_id is None else [letter_id])
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    except KeyError as exc:
        raise _Failure(f"no open dead letter #{exc.args[0]}", EXIT_REFUSED) from exc
    except dead_letters.NotRetryable as exc:
        raise _Failure(str(exc), EXIT_REFUSED) from exc
    except sqlite3.Error as exc:
        raise _Failure(f"retry failed, nothing changed: {exc}", EXIT_DATABASE) from exc
    if not moved:
        print("no open dead letters")
        return
    print(
        f"retried {len(moved)} dead letter(s): "
        + ", ".join(f"#{letter} as seq {seq}" for letter, seq in moved)
    )


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        try:
            settings = GatewaySettings.load(getattr(args, "config", None))
        except ValidationError as exc:
            raise _Failure(
                f"invalid settings: {exc.error_count()} error(s), first: "
                f"{exc.errors()[0]['loc']} {exc.errors()[0]['msg']}",
                EXIT_USAGE,
            ) from exc
        db = _open(settings)
        try:
            if args.command == "list":
                _list(db, args.all, args.json)
            else:
                _retry(db, None if args.all else args.id)
        finally:
            db.close()
    except _Failure as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.code
    return 0
