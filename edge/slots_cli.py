"""``vending-gateway slots list|enable``: the technician's view and switch of a machine's slots.

A slot whose dispenses fail ``disable_slot_after_failures`` times in a row is switched off by the
gateway (the kiosk stops selling it). After clearing the jam, the technician at the site turns
it on again here; the gateway records a ``slot.state`` event (reason ``technician``) that the
cloud learns of on the next push. Operators do the same from the cloud (``enable_rev``).

Works on the database named by the same settings as the gateway (``--config`` or the
environment), beside a running gateway: SQLite WAL lets it read while the gateway writes, and an
enable is one short write transaction (the kiosk sells the slot at once; the event goes out
within ``sync_pull_interval_s``). Exit codes: 0 done, 1 refused (no such machine or slot),
2 usage or invalid settings, 3 database missing, not upgraded, locked or unreadable.
"""

import argparse
import json
import sqlite3
import sys
from pathlib import Path

import sqlite_utils
from pydantic import ValidationError

from edge.errors import CatalogItemNotFound
from edge.settings import GatewaySettings
from edge.store import ledger
from edge.store.dbthread import open_database

PROG = "vending-gateway slots"
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
        prog=PROG, description="List a machine's slots or enable a disabled one.", parents=[config]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="slots and whether they are sold", parents=[config])
    listing.add_argument("machine_id", nargs="?", help="one machine (default: all)")
    listing.add_argument("--json", action="store_true", help="one JSON object a line")
    enable = commands.add_parser(
        "enable", help="sell a disabled slot again (after clearing the jam)", parents=[config]
    )
    enable.add_argument("machine_id")
    enable.add_argument("slot")
    return parser


def _open(settings: GatewaySettings) -> sqlite_utils.Database:
    path = settings.db_path
    if not path.is_file():
        raise _Failure(f"no gateway database at {path}", EXIT_DATABASE)
    try:
        db = open_database(path)
        columns = {row[1] for row in db.execute("PRAGMA table_info(catalog)").fetchall()}
    except sqlite3.Error as exc:
        raise _Failure(f"cannot read {path}: {exc}", EXIT_DATABASE) from exc
    if "enabled" not in columns:
        db.close()
        raise _Failure(
            f"{path} has no slot switches yet: start the gateway once to upgrade it",
            EXIT_DATABASE,
        )
    return db


def _list(db: sqlite_utils.Database, machine_id: str | None, as_json: bool) -> None:
    where, params = ("AND machine_id = ?", [machine_id]) if machine_id else ("", [])
    rows = db.execute(
        "SELECT machine_id, slot, id, name, quantity, reserved, enabled, disabled_reason, "
        f"consecutive_failures FROM catalog WHERE active = 1 {where} ORDER BY machine_id, slot",
        params,
    ).fetchall()
    if as_json:
        for row in rows:
            print(json.dumps(dict(row) | {"enabled": bool(row["enabled"])}, ensure_ascii=False))
        return
    if not rows:
        print("no slots" + (f" on machine {machine_id}" if machine_id else ""))
        return
    for row in rows:
        state = "on" if row["enabled"] else f"OFF ({row['disabled_reason'] or 'disabled'})"
        print(
            f"{row['machine_id']} {row['slot']} {state}: {row['name']} ({row['id']}), "
            f"{row['quantity']} in stock, {row['reserved']} reserved, "
            f"{row['consecutive_failures']} failed dispense(s) in a row"
        )


def _enable(db: sqlite_utils.Database, machine_id: str, slot: str) -> None:
    row = db.execute(
        "SELECT id FROM catalog WHERE machine_id = ? AND slot = ? AND active = 1",
        [machine_id, slot],
    ).fetchone()
    if row is None:
        raise _Failure(f"machine {machine_id} has no slot {slot}", EXIT_REFUSED)
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            changed = ledger.set_slot_enabled(
                db, row["id"], enabled=True, reason=ledger.SLOT_TECHNICIAN
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    except CatalogItemNotFound as exc:  # removed between the two statements
        raise _Failure(f"machine {machine_id} has no slot {slot}", EXIT_REFUSED) from exc
    except sqlite3.Error as exc:
        raise _Failure(f"enable failed, nothing changed: {exc}", EXIT_DATABASE) from exc
    if changed:
        print(f"slot {slot} of machine {machine_id} enabled: the kiosk sells it again")
    else:
        print(f"slot {slot} of machine {machine_id} was already enabled")


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
                _list(db, args.machine_id, args.json)
            else:
                _enable(db, args.machine_id, args.slot)
        finally:
            db.close()
    except _Failure as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.code
    return 0
