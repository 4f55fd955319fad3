"""``vending-gateway dead-letters list|retry``: the gateway's sync dead letters, from a shell.

Runs beside a running gateway like every offline command (``edge.offline_cli``: settings,
exit codes); a retry is one short write transaction, and the gateway's push loop sends the event
within ``sync_pull_interval_s``. Refused (exit 1): an unknown or already retried id, or a payment
letter (settled from the cloud's reconciliation, never replayed).
"""

import argparse
import json

import sqlite_utils

from edge.offline_cli import EXIT_REFUSED, CommandFailed, config_option, has_table, run, write
from edge.store import dead_letters

PROG = "vending-gateway dead-letters"


def _parser() -> argparse.ArgumentParser:
    config = config_option()
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
        moved = write(
            db, "retry", lambda: dead_letters.retry(db, None if letter_id is None else [letter_id])
        )
    except KeyError as exc:
        raise CommandFailed(f"no open dead letter #{exc.args[0]}", EXIT_REFUSED) from exc
    except dead_letters.NotRetryable as exc:
        raise CommandFailed(str(exc), EXIT_REFUSED) from exc
    if not moved:
        print("no open dead letters")
        return
    print(
        f"retried {len(moved)} dead letter(s): "
        + ", ".join(f"#{letter} as seq {seq}" for letter, seq in moved)
    )


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)

    def command(db: sqlite_utils.Database) -> None:
        if args.command == "list":
            _list(db, args.all, args.json)
        else:
            _retry(db, None if args.all else args.id)

    return run(PROG, args, has_table("dead_letters"), command)
