"""Secrets at rest in the gateway database: machine command keys and customer phone numbers
(in ``orders`` and in the outbox's order events) are sealed values (``contracts.sealing``).

The key ring is bound to each connection the store opens (writer and reader threads), so the
ledger's row functions open and seal without every caller threading the key ring through. A
connection with no key ring bound (a tool opening the file by hand) raises instead of returning
ciphertext as if it were the value.

Contexts (associated data) bind each value to its row: ``machines.command_key:<machine id>``,
``orders.customer_phone:<order id>``, ``outbox.customer_phone:<event id>``.
"""

import json
import weakref
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from contracts.sealing import KeyRing, SealingError, is_sealed
from edge.errors import StoreError

Db = sqlite_utils.Database
_CANARY_PREFIX = "sealing_canary:"
_rings: "weakref.WeakKeyDictionary[Db, KeyRing]" = weakref.WeakKeyDictionary()


class SealedDataError(StoreError):
    """The configured master keys do not open this database's sealed values."""


def bind(db: Db, ring: KeyRing) -> None:
    _rings[db] = ring


def ring_of(db: Db) -> KeyRing:
    ring = _rings.get(db)
    if ring is None:
        raise StoreError("no master key is bound to this database connection")
    return ring


def _open(db: Db, value: str, context: str) -> str:
    try:
        return ring_of(db).open(value, context)
    except SealingError as exc:
        raise SealedDataError(str(exc)) from exc


def seal_command_key(db: Db, machine_id: str, key_hex: str) -> str:
    return ring_of(db).seal(key_hex, f"machines.command_key:{machine_id}")


def open_command_key(db: Db, machine_id: str, sealed: str) -> bytes:
    return bytes.fromhex(_open(db, sealed, f"machines.command_key:{machine_id}"))


def seal_phone(db: Db, order_id: str, phone: str | None) -> str | None:
    return ring_of(db).seal_optional(phone, f"orders.customer_phone:{order_id}")


def open_phone(db: Db, order_id: str, sealed: str | None) -> str | None:
    return None if sealed is None else _open(db, sealed, f"orders.customer_phone:{order_id}")


def seal_outbox_payload(db: Db, event_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    phone = payload.get("customer_phone")
    if not isinstance(phone, str):
        return payload
    return payload | {
        "customer_phone": ring_of(db).seal(phone, f"outbox.customer_phone:{event_id}")
    }


def open_outbox_payload(db: Db, event_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    phone = payload.get("customer_phone")
    if not isinstance(phone, str) or not is_sealed(phone):
        return payload
    return payload | {"customer_phone": _open(db, phone, f"outbox.customer_phone:{event_id}")}


# --- start-up check and rekey ---------------------------------------------------------------


def check_keys(db: Db) -> None:
    """Refuse to start when a key that sealed this database is missing or different: better a
    clear error now than ciphertext failing to open in the middle of a vend."""
    if "kv" not in db.table_names():
        return
    ring = ring_of(db)
    rows = db.execute(
        "SELECT key, value FROM kv WHERE key LIKE ?", [f"{_CANARY_PREFIX}%"]
    ).fetchall()
    for key, value in rows:
        try:
            ring.check_canary(key.removeprefix(_CANARY_PREFIX), value)
        except SealingError as exc:
            raise SealedDataError(str(exc)) from exc


def mark_active_key(db: Db) -> None:
    ring = ring_of(db)
    db.execute(
        "INSERT OR IGNORE INTO kv (key, value) VALUES (?, ?)",
        [f"{_CANARY_PREFIX}{ring.active}", ring.canary(ring.active)],
    )


def _reseal_payloads(db: Db, ring: KeyRing, table: str, key: str) -> int:
    count = 0
    for row_id, event_id, text in db.execute(
        f"SELECT {key}, event_id, payload FROM {table} WHERE payload LIKE '%customer_phone%'"
    ).fetchall():
        payload = json.loads(text)
        phone = payload.get("customer_phone")
        if isinstance(phone, str) and ring.needs_reseal(phone):
            payload["customer_phone"] = ring.reseal(phone, f"outbox.customer_phone:{event_id}")
            db.execute(
                f"UPDATE {table} SET payload = ? WHERE {key} = ?",
                [json.dumps(payload, separators=(",", ":")), row_id],
            )
            count += 1
    return count


@dataclass(frozen=True)
class RekeyReport:
    command_keys: int
    phones: int
    outbox_events: int
    retired_keys: list[str]


def reseal_all(db: Db, *, retire: bool) -> RekeyReport:
    """Seal plaintext values and re-seal values under older keys with the active key. With
    ``retire``, the canaries of keys no longer used are removed, so those keys may be dropped
    from the configuration."""
    ring = ring_of(db)
    try:
        keys = 0
        for machine_id, value in db.execute("SELECT id, command_key FROM machines").fetchall():
            if ring.needs_reseal(value):
                db.execute(
                    "UPDATE machines SET command_key = ? WHERE id = ?",
                    [ring.reseal(value, f"machines.command_key:{machine_id}"), machine_id],
                )
                keys += 1
        phones = 0
        for order_id, value in db.execute(
            "SELECT id, customer_phone FROM orders WHERE customer_phone IS NOT NULL"
        ).fetchall():
            if ring.needs_reseal(value):
                db.execute(
                    "UPDATE orders SET customer_phone = ? WHERE id = ?",
                    [ring.reseal(value, f"orders.customer_phone:{order_id}"), order_id],
                )
                phones += 1
        events = _reseal_payloads(db, ring, "outbox", "seq")
        if "dead_letters" in db.table_names():
            # Moved aside from the outbox with the payload as it was: same event id, same seal.
            events += _reseal_payloads(db, ring, "dead_letters", "id")
    except SealingError as exc:
        raise SealedDataError(str(exc)) from exc
    mark_active_key(db)
    retired: list[str] = []
    if retire:
        for (key,) in db.execute(
            "SELECT key FROM kv WHERE key LIKE ? AND key != ?",
            [f"{_CANARY_PREFIX}%", f"{_CANARY_PREFIX}{ring.active}"],
        ).fetchall():
            db.execute("DELETE FROM kv WHERE key = ?", [key])
            retired.append(key.removeprefix(_CANARY_PREFIX))
    return RekeyReport(keys, phones, events, retired)
