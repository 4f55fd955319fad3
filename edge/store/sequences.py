"""Freshness of signed device messages: per machine, which ``seq`` values were accepted.

The broker is not the authority for money (docs/protocol.md, "Signed device messages"). A
device signs what moves money or stock with its ``up_key`` and numbers it with ``seq``, a
counter that only grows (kept in its flash journal). Here, per machine:

* ``high_water`` is the highest seq accepted; a seq at or below ``high_water - WINDOW`` is
  refused. Inside the window a seq is accepted once: money events are resent in journal order
  and a newer inventory report may overtake them, so "below the high-water mark" alone is no
  replay. Each accepted (machine, seq) is recorded with the message's event id, in the same
  transaction that applies the message.
* ``floor``: after the database was restored from an older copy, the accepted seqs between the
  copy and the restore are gone from it. The sidecar file (below) still knows the high-water
  mark reached, so everything up to it is refused unless the ledger already holds the event
  (a genuine resend of an event the restored database has is acknowledged, nothing more).
* Both are tied to the key they were counted under (``key_id``): a machine re-credentialed
  by the cloud starts counting afresh with its new key.

The sidecar ``<database>.sequences.json`` (0600, replaced atomically) holds each machine's
high-water mark outside the database, so a restored older database cannot lower it: at start
the store takes the higher of the two.
"""

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Literal

import sqlite_utils

log = logging.getLogger(__name__)

Db = sqlite_utils.Database

WINDOW = 4096

Verdict = Literal["fresh", "duplicate", "stale", "replay"]


# (machine id, key id) -> high-water mark: what the sidecar holds.
Marks = dict[tuple[str, str], int]


def sidecar_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".sequences.json")


def admit(
    db: Db, machine_id: str, key_id: str, seq: int, event_id: str, kind: str, known_high: int
) -> Verdict:
    """Record ``seq`` for ``machine_id`` if it is fresh. ``duplicate``: this very event was
    accepted under this seq before. ``replay``: the seq was accepted for another event.
    ``stale``: below the window or the restore floor; the caller decides by the ledger.

    ``known_high`` is the highest mark this gateway has seen for the machine and key (the
    sidecar's, kept in memory by the store). Above the database's, the database was restored
    from an older copy: the seqs accepted since the copy are unknown, so all of them are
    refused from now on (the floor) unless the ledger has the event."""
    row = db.execute(
        "SELECT key_id, high_water, floor FROM device_sequences WHERE machine_id = ?",
        [machine_id],
    ).fetchone()
    if row is None or row["key_id"] != key_id or int(row["high_water"]) < known_high:
        if row is not None and row["key_id"] != key_id:
            log.info("machine %s has a new key: its message sequence starts afresh", machine_id)
        db.execute("DELETE FROM device_messages_seen WHERE machine_id = ?", [machine_id])
        db.execute(
            "INSERT INTO device_sequences (machine_id, key_id, high_water, floor) "
            "VALUES (?, ?, ?, ?) ON CONFLICT(machine_id) DO UPDATE SET "
            "key_id = excluded.key_id, high_water = excluded.high_water, floor = excluded.floor",
            [machine_id, key_id, known_high, known_high],
        )
        high_water = floor = known_high
    else:
        high_water, floor = int(row["high_water"]), int(row["floor"])
    seen = db.execute(
        "SELECT event_id FROM device_messages_seen WHERE machine_id = ? AND seq = ?",
        [machine_id, seq],
    ).fetchone()
    if seen is not None:
        return "duplicate" if seen["event_id"] == event_id else "replay"
    if seq <= max(high_water - WINDOW, floor):
        return "stale"
    db.execute(
        "INSERT INTO device_messages_seen (machine_id, seq, event_id, kind, accepted_at) "
        "VALUES (?, ?, ?, ?, datetime('now'))",
        [machine_id, seq, event_id, kind],
    )
    if seq > high_water:
        db.execute(
            "UPDATE device_sequences SET high_water = ? WHERE machine_id = ?", [seq, machine_id]
        )
        # Anything at or below the new window's edge is refused by the comparison above.
        db.execute(
            "DELETE FROM device_messages_seen WHERE machine_id = ? AND seq <= ?",
            [machine_id, seq - WINDOW],
        )
    return "fresh"


def marks(db: Db) -> Marks:
    rows = db.execute("SELECT machine_id, key_id, high_water FROM device_sequences").fetchall()
    return {(r["machine_id"], r["key_id"]): int(r["high_water"]) for r in rows}


def merged(a: Marks, b: Marks) -> Marks:
    out = dict(a)
    for mark, high in b.items():
        out[mark] = max(out.get(mark, 0), high)
    return out


def read_sidecar(path: Path) -> Marks:
    """The sidecar's marks; an unreadable one is reported and ignored (the database's marks
    still hold, and the file is rewritten from them)."""
    try:
        data = json.loads(path.read_text())
        return {
            (str(machine_id), str(key_id)): int(high)
            for machine_id, by_key in data["machines"].items()
            for key_id, high in by_key.items()
        }
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.error("device sequence sidecar %s unreadable (%s); using the database's", path, exc)
        return {}


def write_sidecar(path: Path, current: Marks, *, sync: bool = True) -> None:
    """Replace the sidecar atomically. ``sync=False`` skips the fsync: after each accepted
    message the database's commit (synchronous=FULL) already made the mark durable, and the
    store rewrites the sidecar from the database at every start, so a sidecar that a power cut
    left behind costs nothing; only that start-up write needs to reach the disk."""
    machines: dict[str, dict[str, int]] = {}
    for (machine_id, key_id), high in sorted(current.items()):
        machines.setdefault(machine_id, {})[key_id] = high
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            json.dump({"v": 1, "machines": machines}, f, separators=(",", ":"))
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
