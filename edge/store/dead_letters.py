"""The gateway's dead letters: outbox events the cloud refused, moved aside so sync goes on.

Plain functions over one ``sqlite_utils.Database`` so the store's writer thread and the
``vending-gateway dead-letters`` command (its own connection, beside a running gateway: WAL and
one short transaction per call) share them. An event keeps its id and its payload exactly as the
outbox held it (sealed fields stay sealed: they are bound to the event id, which never changes),
so a retry re-enters the outbox under a new seq and the cloud still deduplicates it by id.

Payment confirmations the gateway could not apply (``PAYMENT``: no such order here, an amount
or currency that is not the order's...) are kept in the same list, so one command shows
everything that needs a person. They are not retried into the outbox (they came from the cloud,
not for it): the money is resolved from the cloud's reconciliation report.
"""

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlite_utils

OPEN = "open"
RETRIED = "retried"
# Where the refusal came from: the cloud named the event in ``PushAck.rejected`` (it keeps a
# dead letter too), the gateway isolated it by splitting a batch the cloud refused whole, or
# the gateway could not read the row as an event at all.
CLOUD = "cloud"
ISOLATED = "isolated"
UNREADABLE = "unreadable"  # the gateway itself could not read the outbox row as an event
PAYMENT = "payment"  # a payment confirmation (channel message) the gateway could not apply
PAYMENT_TYPE = "payment.update"
MAX_ERROR = 1000

Db = sqlite_utils.Database


@dataclass(frozen=True)
class DeadLetter:
    id: int
    event_id: str
    seq: int
    type: str
    payload: str
    occurred_at: str
    source: str
    http_status: int | None
    code: str
    error: str
    attempts: int
    state: str
    first_failed_at: str
    last_failed_at: str
    retried_at: str | None
    retried_seq: int | None

    def summary(self) -> dict[str, Any]:
        """Everything but the payload (which may hold customer data)."""
        return {k: v for k, v in self.__dict__.items() if k != "payload"}


def _now() -> str:
    return datetime.now(UTC).isoformat()


def move_aside(
    db: Db, event_id: str, *, source: str, http_status: int | None, code: str, error: str
) -> bool:
    """Move the unsent outbox event ``event_id`` into the dead letters (a second failure of the
    same event reopens its letter, one attempt more). False when the outbox no longer holds it."""
    row = db.execute(
        "SELECT seq, type, payload, occurred_at FROM outbox WHERE event_id = ? AND sent = 0",
        [event_id],
    ).fetchone()
    if row is None:
        return False
    now = _now()
    db.execute(
        "INSERT INTO dead_letters (event_id, seq, type, payload, occurred_at, source, "
        "http_status, code, error, attempts, state, first_failed_at, last_failed_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?) "
        "ON CONFLICT(event_id) DO UPDATE SET seq = excluded.seq, type = excluded.type, "
        "payload = excluded.payload, occurred_at = excluded.occurred_at, "
        "source = excluded.source, http_status = excluded.http_status, code = excluded.code, "
        "error = excluded.error, attempts = dead_letters.attempts + 1, state = excluded.state, "
        "last_failed_at = excluded.last_failed_at, retried_at = NULL, retried_seq = NULL",
        [
            event_id,
            row["seq"],
            row["type"],
            row["payload"],
            row["occurred_at"],
            source,
            http_status,
            code[:64],
            error[:MAX_ERROR],
            OPEN,
            now,
            now,
        ],
    )
    db.execute("DELETE FROM outbox WHERE seq = ?", [row["seq"]])
    return True


class NotRetryable(ValueError):
    """A payment dead letter: nothing to send to the cloud again."""

    def __init__(self, letter_id: int) -> None:
        super().__init__(
            f"dead letter #{letter_id} is a payment confirmation the gateway could not apply; "
            "it is not sent anywhere: resolve the payment from the cloud's reconciliation report"
        )
        self.letter_id = letter_id


def record_payment(db: Db, message_id: str, payload: str, *, code: str, error: str) -> bool:
    """Keep a payment confirmation the gateway could not apply (``payload``: its JSON) with
    the reason. False when this channel message was kept before."""
    now = _now()
    cursor = db.execute(
        "INSERT INTO dead_letters (event_id, seq, type, payload, occurred_at, source, "
        "http_status, code, error, attempts, state, first_failed_at, last_failed_at) "
        "VALUES (?, 0, ?, ?, ?, ?, NULL, ?, ?, 1, ?, ?, ?) ON CONFLICT(event_id) DO NOTHING",
        [
            f"payment:{message_id}",
            PAYMENT_TYPE,
            payload,
            now,
            PAYMENT,
            code[:64],
            error[:MAX_ERROR],
            OPEN,
            now,
            now,
        ],
    )
    return cursor.rowcount == 1


def open_count(db: Db) -> int:
    row = db.execute("SELECT COUNT(*) FROM dead_letters WHERE state = ?", [OPEN]).fetchone()
    return int(row[0])


def listing(db: Db, *, include_retried: bool = False) -> list[DeadLetter]:
    where = "" if include_retried else "WHERE state = 'open'"
    rows = db.execute(f"SELECT * FROM dead_letters {where} ORDER BY id").fetchall()
    return [DeadLetter(**dict(row)) for row in rows]


def retry(db: Db, ids: list[int] | None) -> list[tuple[int, int]]:
    """Put open letters (``ids``, or all when None) back into the outbox under a new seq and the
    same event id. Returns (letter id, new seq) pairs; an id that is unknown or not open raises
    ``KeyError``, a payment letter's id ``NotRetryable``, and nothing is changed (the caller
    runs this in one transaction). Without ids, payment letters are left as they are."""
    if ids is None:
        letters = [letter for letter in listing(db) if letter.source != PAYMENT]
    else:
        letters = []
        for letter_id in ids:
            row = db.execute(
                "SELECT * FROM dead_letters WHERE id = ? AND state = ?", [letter_id, OPEN]
            ).fetchone()
            if row is None:
                raise KeyError(letter_id)
            if row["source"] == PAYMENT:
                raise NotRetryable(letter_id)
            letters.append(DeadLetter(**dict(row)))
    now = _now()
    moved: list[tuple[int, int]] = []
    for letter in letters:
        cursor = db.execute(
            "INSERT INTO outbox (event_id, type, payload, occurred_at) VALUES (?, ?, ?, ?)",
            [letter.event_id, letter.type, letter.payload, letter.occurred_at],
        )
        seq = int(cursor.lastrowid or 0)
        db.execute(
            "UPDATE dead_letters SET state = ?, retried_at = ?, retried_seq = ? WHERE id = ?",
            [RETRIED, now, seq, letter.id],
        )
        moved.append((letter.id, seq))
    return moved
