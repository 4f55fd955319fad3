"""``vending-gateway slots list|enable``: the technician's view and switch of a machine's slots.

A slot whose dispenses fail ``disable_slot_after_failures`` times in a row is switched off by the
gateway (the kiosk stops selling it). After clearing the jam, the technician at the site turns
it on again here; the gateway records a ``slot.state`` event (reason ``technician``) that the
cloud learns of on the next push. Operators do the same from the cloud (``enable_rev``).

Runs beside a running gateway like every offline command (``edge.offline_cli``: settings,
exit codes); an enable is one short write transaction, so the kiosk sells the slot at once and
the event goes out within ``sync_pull_interval_s``. Refused (exit 1): no such machine or slot.
"""

import argparse
import json

import sqlite_utils

from edge.errors import CatalogItemNotFound
from edge.offline_cli import EXIT_REFUSED, CommandFailed, config_option, has_column, run, write
from edge.store import ledger

PROG = "vending-gateway slots"


def _parser() -> argparse.ArgumentParser:
    config = config_option()
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
        raise CommandFailed(f"machine {machine_id} has no slot {slot}", EXIT_REFUSED)
    try:
        changed = write(
            db,
            "enable",
            lambda: ledger.set_slot_enabled(
                db, row["id"], enabled=True, reason=ledger.SLOT_TECHNICIAN
            ),
        )
    except CatalogItemNotFound as exc:  # removed between the two statements
        raise CommandFailed(f"machine {machine_id} has no slot {slot}", EXIT_REFUSED) from exc
    if changed:
        print(f"slot {slot} of machine {machine_id} enabled: the kiosk sells it again")
    else:
        print(f"slot {slot} of machine {machine_id} was already enabled")


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)

    def command(db: sqlite_utils.Database) -> None:
        if args.command == "list":
            _list(db, args.machine_id, args.json)
        else:
            _enable(db, args.machine_id, args.slot)

    return run(PROG, args, has_column("catalog", "enabled"), command)
