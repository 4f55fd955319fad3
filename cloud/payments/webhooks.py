"""Razorpay webhooks: verified over the raw body, recorded once, applied in the same transaction.

``POST /api/v1/webhooks/razorpay/{tenant_id}`` (``cloud.routes.webhooks``) on the public listener,
without a JWT: the signature is the authentication. ``X-Razorpay-Signature`` must be the hex
HMAC-SHA256 of the exact bytes received under the tenant's webhook secret, compared in constant
time. An unknown tenant, a tenant without a provider, and a missing or wrong signature all get the
same 400 ``invalid_signature`` (so tenant ids cannot be probed), and nothing is stored.

Each verified event is recorded in ``provider_events`` under its ``X-Razorpay-Event-Id`` (or the
SHA-256 of the body when the header is missing) in the transaction that applies it, and the 2xx
goes out only after that commit: a crash before it means Razorpay retries, and the retry is
applied then. A redelivery answers 200 ``duplicate`` and applies nothing. Two deliveries racing:
the event row is inserted first, so the second waits on its key and then finds it.

Events, whatever order they come in and however often:

- ``qr_code.credited``, ``payment.captured``: the payment (with its QR code, when the event
  carries it) goes through ``cloud.payments.captures.settle_provider_payment``: captured once,
  refunded when it lands on an ended order or pays twice, recorded when it matches nothing;
- ``payment.failed``: recorded (the customer's money did not move);
- ``qr_code.closed``: our payments on that QR code get ``close_state = 'closed'``;
- ``refund.created`` / ``refund.processed`` / ``refund.failed``: our refund, found by the
  provider's refund id, the ``refund_id`` note we send, or (a webhook faster than our own call's
  answer) the one unsent refund of that provider payment and amount, moves forward only
  (``cloud.payments.refunds.apply_provider_status``): processed -> refunded, failed -> retried
  with backoff, and ``refunded`` never goes back;
- anything else: recorded as ``ignored`` and answered 200 (Razorpay would retry a 4xx for days).

The stored payload is the event without the payer's personal data (contact, e-mail, VPA, card
and bank details): reconciliation needs amounts and ids, not who paid.
"""

import hashlib
import hmac
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.db import schema as t
from cloud.db.times import utcnow
from cloud.errors import CloudError, ValidationFailed
from cloud.payments.captures import note_provider_payment, settle_provider_payment
from cloud.payments.refunds import (
    DUE_STATES,
    MANUAL_REVIEW,
    RetryPolicy,
    apply_provider_status,
    insert_ignore,
)
from cloud.payments.registry import webhook_secret

log = logging.getLogger(__name__)

MAX_BODY = 256 * 1024
SIGNATURE_HEADER = "X-Razorpay-Signature"
EVENT_ID_HEADER = "X-Razorpay-Event-Id"
_EVENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_EVENT_TYPE = re.compile(r"^[a-z0-9_.]{1,64}$")
_TENANT_ID = re.compile(r"^[A-Za-z0-9-]{1,36}$")
_PROVIDER_ID = re.compile(r"^[A-Za-z0-9_]{4,60}$")
# The payer's personal data: not needed to account for the money, so not kept.
_PERSONAL = frozenset(
    {"email", "contact", "vpa", "upi", "card", "card_id", "bank_account", "customer_details"}
)
_RETRIES = 3
# A signature check that fails is logged at most this often (with the count since the last line):
# a flood of forged calls must not flood the logs.
_LOG_EVERY_S = 60.0


class WebhookError(CloudError):
    """Root of the webhook endpoint's refusals."""


class InvalidSignature(WebhookError, ValidationFailed):
    status = 400
    code = "invalid_signature"


class PayloadTooLarge(WebhookError):
    status = 413
    code = "payload_too_large"


@dataclass
class _Rejections:
    """Refused deliveries since the start (a counter for health/metrics) and the log throttle."""

    total: int = 0
    since_log: int = 0
    last_log: float = field(default=-_LOG_EVERY_S)

    def count(self, reason: str, tenant_id: str) -> None:
        self.total += 1
        self.since_log += 1
        now = time.monotonic()
        if now - self.last_log >= _LOG_EVERY_S:
            log.warning(
                "refused %s webhook(s) with a bad signature or unknown tenant (latest: %s, tenant "
                "path %r)",
                self.since_log,
                reason,
                tenant_id[:40],
            )
            self.since_log = 0
            self.last_log = now


REJECTIONS = _Rejections()


def _refuse(reason: str, tenant_id: str) -> InvalidSignature:
    REJECTIONS.count(reason, tenant_id)
    return InvalidSignature("the webhook signature is missing or does not verify")


def sign(secret: str, raw: bytes) -> str:
    """The signature Razorpay sends: hex HMAC-SHA256 of the raw body under the webhook secret."""
    return hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


async def verify(conn: AsyncConnection, tenant_id: str, raw: bytes, signature: str | None) -> str:
    """The tenant's provider name when ``signature`` verifies ``raw``; ``InvalidSignature``
    otherwise (the same for every reason)."""
    found = await webhook_secret(conn, tenant_id) if _TENANT_ID.match(tenant_id) else None
    # The HMAC is computed on every path, so an unknown tenant does not answer measurably faster.
    expected = sign(found[1] if found else "no tenant secret", raw).encode()
    given = (signature or "").strip().encode("utf-8", "replace")
    if found is None:
        raise _refuse("unknown tenant or no provider", tenant_id)
    if not hmac.compare_digest(expected, given):
        raise _refuse("missing signature" if not signature else "bad signature", tenant_id)
    return found[0]


def redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items() if k not in _PERSONAL}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _entity(body: dict[str, Any], kind: str) -> dict[str, Any] | None:
    payload = body.get("payload")
    wrapper = payload.get(kind) if isinstance(payload, dict) else None
    entity = wrapper.get("entity") if isinstance(wrapper, dict) else None
    return entity if isinstance(entity, dict) else None


def _str(entity: dict[str, Any] | None, key: str) -> str | None:
    value = entity.get(key) if entity else None
    return value if isinstance(value, str) and value else None


@dataclass
class WebhookResult:
    event_id: str
    event_type: str
    outcome: str
    duplicate: bool = False
    note: str | None = None
    wake: list[str] = field(default_factory=list)
    workers: bool = False


def event_key(raw: bytes, header: str | None) -> str:
    """The dedupe key: Razorpay's event id, or the body's SHA-256 when it sent none usable."""
    if header and _EVENT_ID.match(header):
        return header
    return hashlib.sha256(raw).hexdigest()


async def _key_for_tenant(conn: AsyncConnection, tenant_id: str, key: str) -> tuple[str, bool]:
    """The row id for this tenant's event and whether it is already recorded. Event ids are the
    provider's and unique across its accounts; should one still be another tenant's here, this
    tenant's event is kept under a tenant-bound id rather than dropped as that one's duplicate."""
    owner = await conn.scalar(
        sa.select(t.provider_events.c.tenant_id).where(t.provider_events.c.id == key)
    )
    if owner is None or owner == tenant_id:
        return key, owner is not None
    bound = "t-" + hashlib.sha256(f"{tenant_id}\n{key}".encode()).hexdigest()[:62]
    seen = await conn.scalar(
        sa.select(t.provider_events.c.id).where(t.provider_events.c.id == bound)
    )
    return bound, seen is not None


async def _close_qr(conn: AsyncConnection, tenant_id: str, qr: dict[str, Any] | None) -> str:
    qr_id = _str(qr, "id")
    if qr_id is None or not _PROVIDER_ID.match(qr_id):
        return "malformed"
    now = utcnow()
    result = await conn.execute(
        t.payments.update()
        .where(
            t.payments.c.tenant_id == tenant_id,
            t.payments.c.provider_ref == qr_id,
            sa.or_(t.payments.c.close_state.is_(None), t.payments.c.close_state != "closed"),
        )
        .values(close_state="closed", closed_at=now, updated_at=now)
    )
    if result.rowcount:
        return "closed"
    known = await conn.scalar(
        sa.select(t.payments.c.id).where(
            t.payments.c.tenant_id == tenant_id, t.payments.c.provider_ref == qr_id
        )
    )
    return "already_closed" if known else "unmatched"


async def _our_refund(conn: AsyncConnection, tenant_id: str, entity: dict[str, Any]) -> Any:
    """Our refund the provider's refund entity is about (see the module docstring), locked."""
    refunds = t.refunds
    rfnd_id = _str(entity, "id")
    notes = entity.get("notes")
    note_id = notes.get("refund_id") if isinstance(notes, dict) else None
    base = sa.select(refunds.c.id).where(refunds.c.tenant_id == tenant_id)
    found = None
    if rfnd_id is not None:
        found = await conn.scalar(base.where(refunds.c.provider_refund_id == rfnd_id))
    if found is None and isinstance(note_id, str):
        found = await conn.scalar(base.where(refunds.c.id == note_id))
    if found is None:
        pay_id = _str(entity, "payment_id")
        amount = entity.get("amount")
        if pay_id is not None and isinstance(amount, int):
            candidates = (
                await conn.execute(
                    base.where(
                        refunds.c.provider_payment_id == pay_id,
                        refunds.c.amount == amount,
                        refunds.c.provider_refund_id.is_(None),
                        refunds.c.status.in_((*DUE_STATES, MANUAL_REVIEW)),
                    ).limit(2)
                )
            ).all()
            if len(candidates) == 1:
                found = candidates[0].id
    if found is None:
        return None
    query = sa.select(refunds).where(refunds.c.id == found)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return (await conn.execute(query)).one()


_REFUND_EVENT_STATUS = {
    "refund.processed": "processed",
    "refund.failed": "failed",
}


async def _refund_event(
    conn: AsyncConnection,
    tenant_id: str,
    event_type: str,
    body: dict[str, Any],
    policy: RetryPolicy,
    result: WebhookResult,
) -> str:
    entity = _entity(body, "refund")
    rfnd_id = _str(entity, "id")
    if entity is None or rfnd_id is None or not _PROVIDER_ID.match(rfnd_id):
        return "malformed"
    payment = _entity(body, "payment")
    if payment is not None:
        await note_provider_payment(conn, tenant_id, payment)
    row = await _our_refund(conn, tenant_id, entity)
    if row is None:
        # A refund made in the provider's dashboard, or for a payment not ours: reconciliation.
        log.info("provider refund %s matches no refund of tenant %s", rfnd_id, tenant_id)
        return "unmatched"
    status = _REFUND_EVENT_STATUS.get(event_type) or _str(entity, "status") or "pending"
    error = None
    if status == "failed":
        error = "the provider reports the refund failed"
        reason = _str(entity, "error_description") or _str(entity, "status_details")
        if reason:
            error += f": {reason[:200]}"
    before = row.status
    after, woken = await apply_provider_status(conn, row, rfnd_id, status, policy, error=error)
    result.wake.extend(woken)
    result.workers = result.workers or after.status in DUE_STATES
    result.note = f"refund {row.id}: {before} -> {after.status}"
    return "refund_updated" if after.status != before else "refund_unchanged"


async def _apply(
    conn: AsyncConnection,
    tenant_id: str,
    provider: str,
    event_type: str,
    body: dict[str, Any],
    policy: RetryPolicy,
    result: WebhookResult,
) -> str:
    if event_type in ("qr_code.credited", "payment.captured", "payment.failed"):
        payment = _entity(body, "payment")
        if payment is None:
            return "malformed"
        settled = await settle_provider_payment(
            conn, tenant_id, payment, _entity(body, "qr_code"), "webhook", provider=provider
        )
        result.wake.extend(settled.wake)
        result.workers = result.workers or bool(settled.refund_ids)
        if settled.refund_ids:
            result.note = "refund " + ", ".join(settled.refund_ids)
        return settled.outcome
    if event_type == "qr_code.closed":
        return await _close_qr(conn, tenant_id, _entity(body, "qr_code"))
    if event_type in ("refund.created", "refund.processed", "refund.failed"):
        return await _refund_event(conn, tenant_id, event_type, body, policy, result)
    return "ignored"


def _main_entity_id(body: dict[str, Any]) -> str | None:
    for kind in ("refund", "payment", "qr_code"):
        value = _str(_entity(body, kind), "id")
        if value is not None:
            return value[:64]
    return None


async def receive(
    ctx: Any, tenant_id: str, raw: bytes, signature: str | None, event_id: str | None
) -> WebhookResult:
    """Verify, record and apply one delivery; ``InvalidSignature`` when it does not verify."""
    engine = ctx.engine
    async with engine.connect() as conn:
        provider = await verify(conn, tenant_id, raw, signature)
    key = event_key(raw, event_id)
    try:
        parsed = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        parsed = None
    body = parsed if isinstance(parsed, dict) else None
    raw_type = body.get("event") if body is not None else None
    event_type = raw_type if isinstance(raw_type, str) and _EVENT_TYPE.match(raw_type) else None
    policy = RetryPolicy.from_settings(ctx.settings)
    for attempt in range(_RETRIES):
        result = WebhookResult(event_id=key, event_type=event_type or "unknown", outcome="")
        try:
            async with engine.begin() as conn:
                row_id, seen = await _key_for_tenant(conn, tenant_id, key)
                if seen:
                    result.outcome, result.duplicate = "duplicate", True
                    return result
                # The event row first: a concurrent delivery of the same event waits on this key
                # and then finds it recorded, so the effects below are applied once.
                inserted = await insert_ignore(
                    conn,
                    t.provider_events,
                    "id",
                    {
                        "id": row_id,
                        "tenant_id": tenant_id,
                        "provider": provider,
                        "event_type": result.event_type,
                        "entity_id": _main_entity_id(body) if body is not None else None,
                        "payload": json.dumps(redact(body), separators=(",", ":"))
                        if body is not None
                        else "",
                        "outcome": "applying",
                        "received_at": utcnow(),
                    },
                )
                if not inserted:
                    result.outcome, result.duplicate = "duplicate", True
                    return result
                if body is None or event_type is None:
                    result.outcome = "malformed"
                    result.note = "the signed body is not a webhook event we can read"
                else:
                    result.outcome = await _apply(
                        conn, tenant_id, provider, event_type, body, policy, result
                    )
                await conn.execute(
                    t.provider_events.update()
                    .where(t.provider_events.c.id == row_id)
                    .values(outcome=result.outcome[:32], note=(result.note or "")[:500] or None)
                )
        except sa.exc.IntegrityError:
            # A concurrent delivery (or a concurrent poll of the same payment) won a race on a
            # unique key; the next try sees what it stored.
            if attempt == _RETRIES - 1:
                raise
            continue
        log.info(
            "webhook %s %s for tenant %s: %s%s",
            result.event_type,
            key,
            tenant_id,
            result.outcome,
            f" ({result.note})" if result.note else "",
        )
        ctx.hub.wake(result.wake)
        if result.workers:
            ctx.hub.wake_workers()
        return result
    raise AssertionError("unreachable")
