"""The cloud's dead letters: pushed events it could not accept or apply, kept with their error.

A refused event never fails its batch (the rest is stored and acked); it waits here until the
gateway sends it again and it applies (it is then resolved on its own) or an operator retries it
after the cause is fixed (``cloud.sync.events.retry_dead_letter``).
"""

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.db import schema as t
from cloud.db.sealed import SealedDataError, ring_of
from cloud.db.times import utcnow
from cloud.errors import Conflict
from cloud.sync.identity import Gateway
from contracts.sealing import SealingError

# The raw event is kept for inspection and retry, but a hostile or broken gateway must not fill
# the database through it: larger payloads are clipped (and can then be retried only from the
# gateway, which still holds the whole event).
MAX_RAW = 16_384
MAX_MESSAGE = 1000

_NOT_PRINTABLE = re.compile(r"[^\x20-\x7e]")

OPEN = "open"
RESOLVED = "resolved"


class DeadLetterStillFailing(Conflict):
    """A retried dead letter was refused again; it stays open with the new error."""

    code = "dead_letter_still_failing"


class DeadLetterNotRetryable(Conflict):
    """The dead letter is resolved already, or its stored payload was clipped."""

    code = "dead_letter_not_retryable"


@dataclass(frozen=True)
class Refusal:
    """Why one event was not stored: ``code`` is stable for programs, ``message`` for people."""

    code: str
    message: str


def _printable(text: str) -> str:
    return _NOT_PRINTABLE.sub("?", text)


def _phone_context(gateway_id: str, event_id: str) -> str:
    return f"sync_dead_letters.customer_phone:{gateway_id}:{event_id}"


def _with_phone(raw: Any, change: Any) -> Any:
    payload = raw.get("payload") if isinstance(raw, dict) else None
    if not isinstance(payload, dict) or not isinstance(payload.get("customer_phone"), str):
        return raw
    return raw | {"payload": payload | {"customer_phone": change(payload["customer_phone"])}}


def sealed_raw(conn: AsyncConnection, gateway_id: str, event_id: str, raw: Any) -> Any:
    """The event as kept: a customer's phone number sealed like everywhere else at rest."""
    context = _phone_context(gateway_id, event_id)
    return _with_phone(raw, lambda phone: ring_of(conn).seal(phone, context))


def opened_text(conn: AsyncConnection, gateway_id: str, event_id: str, text: str) -> str:
    """The kept event with its phone number opened again (a clipped one stays as it is)."""
    try:
        raw = json.loads(text)
    except ValueError:
        return text
    context = _phone_context(gateway_id, event_id)
    try:
        opened = _with_phone(raw, lambda phone: ring_of(conn).open(phone, context))
    except SealingError as exc:
        raise SealedDataError(f"dead letter of {event_id}: {exc}") from exc
    return json.dumps(opened, ensure_ascii=True, separators=(",", ":"))


def raw_text(raw: Any) -> tuple[str, bool]:
    """The event as JSON text (NUL and other controls escaped, so any database stores it),
    clipped to ``MAX_RAW`` characters."""
    text = json.dumps(raw, ensure_ascii=True, separators=(",", ":"), default=str)
    if len(text) <= MAX_RAW:
        return text, False
    return text[:MAX_RAW], True


async def record(
    conn: AsyncConnection, gateway: Gateway, seq: int, event_id: str, raw: Any, refusal: Refusal
) -> None:
    """Open (or reopen, one attempt more) the dead letter of ``event_id`` from ``gateway``."""
    now = utcnow()
    text, truncated = raw_text(sealed_raw(conn, gateway.id, event_id, raw))
    type_ = raw.get("type") if isinstance(raw, dict) else None
    values = {
        "seq": seq,
        "type": _printable(str(type_))[:64] if type_ else "?",
        "payload": text,
        "payload_truncated": truncated,
        "error_code": refusal.code[:64],
        "error_message": refusal.message[:MAX_MESSAGE],
        "state": OPEN,
        "last_seen_at": now,
        "resolved_at": None,
    }
    existing = await conn.scalar(
        sa.select(t.sync_dead_letters.c.id).where(
            t.sync_dead_letters.c.gateway_id == gateway.id,
            t.sync_dead_letters.c.event_id == event_id,
        )
    )
    if existing is None:
        await conn.execute(
            t.sync_dead_letters.insert().values(
                id=str(uuid.uuid4()),
                tenant_id=gateway.tenant_id,
                site_id=gateway.site_id,
                gateway_id=gateway.id,
                event_id=event_id,
                attempts=1,
                first_seen_at=now,
                **values,
            )
        )
    else:
        await conn.execute(
            t.sync_dead_letters.update()
            .where(t.sync_dead_letters.c.id == existing)
            .values(attempts=t.sync_dead_letters.c.attempts + 1, **values)
        )


async def resolve(conn: AsyncConnection, gateway_id: str, event_ids: list[str]) -> None:
    """Events now stored leave the open list (a gateway re-sent them, fixed)."""
    if not event_ids:
        return
    letters = t.sync_dead_letters
    waiting = await conn.scalar(
        sa.select(letters.c.id)
        .where(letters.c.gateway_id == gateway_id, letters.c.state == OPEN)
        .limit(1)
    )
    if waiting is None:
        return  # the common case: nothing of this gateway waits, skip the IN (...) update
    await conn.execute(
        t.sync_dead_letters.update()
        .where(
            t.sync_dead_letters.c.gateway_id == gateway_id,
            t.sync_dead_letters.c.event_id.in_(event_ids),
            t.sync_dead_letters.c.state == OPEN,
        )
        .values(state=RESOLVED, resolved_at=utcnow())
    )


async def reseal(conn: AsyncConnection) -> int:
    """Re-seal the phone numbers kept in dead letters under the active master key (``rekey``),
    so an old key can be retired while events still wait here."""
    ring = ring_of(conn)
    letters = t.sync_dead_letters
    rows = await conn.execute(
        sa.select(letters.c.id, letters.c.gateway_id, letters.c.event_id, letters.c.payload).where(
            letters.c.payload.like('%"customer_phone":"v1.%')
        )
    )
    count = 0
    for row in rows.all():
        try:
            raw = json.loads(row.payload)
        except ValueError:
            continue  # clipped: the phone number may be cut; the gateway holds the event
        payload = raw.get("payload") if isinstance(raw, dict) else None
        if not isinstance(payload, dict):
            continue
        phone = payload.get("customer_phone")
        if not isinstance(phone, str) or not ring.needs_reseal(phone):
            continue
        try:
            phone = ring.reseal(phone, _phone_context(row.gateway_id, row.event_id))
        except SealingError as exc:
            raise SealedDataError(f"dead letter of {row.event_id}: {exc}") from exc
        resealed = raw | {"payload": payload | {"customer_phone": phone}}
        await conn.execute(
            letters.update()
            .where(letters.c.id == row.id, letters.c.payload == row.payload)
            .values(payload=json.dumps(resealed, ensure_ascii=True, separators=(",", ":")))
        )
        count += 1
    return count
