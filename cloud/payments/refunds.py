"""Refunds of electronic money: recorded, sent through the tenant's provider, followed to the end.

Where a refund comes from (``refunds.source``):

- ``gateway``: the gateway owns order state and decides refunds of paid units that did not come
  out (``refund.request`` events, ``cloud.sync.events``);
- ``cloud``: the cloud decides a payment captured for an order its mirror already shows ended
  (``rf-<payment_id>-unserved``, the same id the gateway would use, so both deciding makes one
  refund) and a second provider payment for something already paid
  (``rf-<provider_payment_id>-duplicate``) or one whose amount is not ours
  (``rf-<provider_payment_id>-mismatch``) (``cloud.payments.captures``).

The refund id is the provider's idempotency key, so sending it again (a retry after a timeout, two
cloud processes racing, a status check) can never pay the customer twice.

States (``contracts.orders.RefundStatus``): ``pending`` (due to send, or sent and not processed
yet) -> ``refunded``; a provider error makes it ``failed`` with a capped, jittered backoff until
``refund_max_attempts``, then ``manual_review``, where the worker stops and an operator retries or
resolves it. Every change of status is told to the site's gateways (``refund.update`` on the push
channel), so the kiosk shows what really happened to the customer's money. Transitions only go
forward: nothing brings a ``refunded`` refund back.

The worker claims due rows with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL and leases them (moves
``next_attempt_at`` ahead) before the provider call, which runs outside any transaction; a process
that dies mid-call leaves the lease to expire and another one sends it again under the same key.
"""

import asyncio
import contextlib
import logging
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cloud.db import schema as t
from cloud.db.engine import is_sqlite
from cloud.db.times import as_utc, utcnow
from cloud.errors import CloudError, NotFound
from cloud.payments.provider import ProviderRejected
from cloud.payments.registry import provider_for
from cloud.sync.hub import ChannelHub
from cloud.sync.outbox import enqueue, site_gateways
from contracts.orders import RefundReason, RefundStatus
from contracts.sync import RefundUpdate

if TYPE_CHECKING:
    # Only for annotations: the context imports the provider modules, and the sync event code
    # (imported by the sync routes) imports this one.
    from cloud.context import CloudContext

log = logging.getLogger(__name__)

REFUND_UPDATE = "refund.update"
SANDBOX = "sandbox"
SOURCE_GATEWAY = "gateway"
SOURCE_CLOUD = "cloud"

PENDING = RefundStatus.PENDING.value
REFUNDED = RefundStatus.REFUNDED.value
FAILED = RefundStatus.FAILED.value
MANUAL_REVIEW = RefundStatus.MANUAL_REVIEW.value
VOIDED = RefundStatus.VOIDED.value
# The states the worker sends from; an operator or a webhook moves the others.
DUE_STATES = (PENDING, FAILED)
FINAL_STATES = (REFUNDED, VOIDED)

MAX_ERROR = 500


class RefundError(CloudError):
    """Root of refund-state errors the API answers with."""


class RefundNotRetryable(RefundError):
    status = 409
    code = "refund_not_retryable"


class RefundNotResolvable(RefundError):
    status = 409
    code = "refund_not_resolvable"


def unserved_id(payment_id: str) -> str:
    """Money captured for an order that had already ended: all of it goes back."""
    return f"rf-{payment_id}-unserved"


def duplicate_id(provider_payment_id: str) -> str:
    """A second provider payment for a QR code or order that was already paid."""
    return f"rf-{provider_payment_id}-duplicate"


def mismatch_id(provider_payment_id: str) -> str:
    """A provider payment on our QR code whose amount or currency is not the payment's."""
    return f"rf-{provider_payment_id}-mismatch"


@dataclass(frozen=True)
class NewRefund:
    id: str
    tenant_id: str
    site_id: str | None
    machine_id: str | None
    order_id: str | None
    payment_id: str | None
    provider: str
    provider_payment_id: str | None
    amount: int
    currency: str
    reason: RefundReason
    source: str
    hold: bool = False


async def insert_ignore(
    conn: AsyncConnection, table: sa.Table, key: str, values: dict[str, Any]
) -> bool:
    """Insert unless a row with this key exists; True when this call inserted it. A concurrent
    insert of the same key (two deliveries, the cloud and the gateway deciding the same refund)
    is a no-op, not an IntegrityError that would fail the whole transaction."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table).values(**values).on_conflict_do_nothing(index_elements=[key])
    result = await conn.execute(statement)
    return bool(result.rowcount == 1)


async def record_refund(conn: AsyncConnection, new: NewRefund) -> tuple[bool, list[str]]:
    """Store a refund once (its id is deterministic). Returns whether this call created it and
    the gateways told about it. A refund the cloud decided is told to the gateways at once (they
    did not decide it); one the gateway asked for it already knows."""
    now = utcnow()
    status = MANUAL_REVIEW if new.hold else PENDING
    created = await insert_ignore(
        conn,
        t.refunds,
        "id",
        {
            "id": new.id,
            "tenant_id": new.tenant_id,
            "site_id": new.site_id,
            "machine_id": new.machine_id,
            "order_id": new.order_id,
            "payment_id": new.payment_id,
            "provider": new.provider,
            "provider_payment_id": new.provider_payment_id,
            "amount": new.amount,
            "currency": new.currency,
            "reason": new.reason.value,
            "source": new.source,
            "status": status,
            "attempts": 0,
            "next_attempt_at": None if new.hold else now,
            "created_at": now,
            "updated_at": now,
        },
    )
    if not created:
        return False, []
    log.info(
        "refund %s recorded (%s, %s paise %s, %s, from the %s)",
        new.id,
        new.reason.value,
        new.amount,
        new.currency,
        status,
        new.source,
    )
    if new.source == SOURCE_GATEWAY:
        return True, []
    row = await _row(conn, new.id)
    return True, await notify(conn, row)


async def _row(conn: AsyncConnection, refund_id: str, *, lock: bool = False) -> Any:
    query = sa.select(t.refunds).where(t.refunds.c.id == refund_id)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return (await conn.execute(query)).one()


async def notify(conn: AsyncConnection, row: Any) -> list[str]:
    """Queue a ``refund.update`` with the refund's current state for the site's gateways."""
    if row.order_id is None or row.payment_id is None or row.site_id is None:
        return []
    update = RefundUpdate(
        refund_id=row.id,
        order_id=row.order_id,
        payment_id=row.payment_id,
        amount=row.amount,
        currency=row.currency,
        status=RefundStatus(row.status),
        provider_refund_id=row.provider_refund_id,
    )
    targets = await site_gateways(conn, row.site_id)
    await enqueue(conn, targets, REFUND_UPDATE, update.model_dump(mode="json"))
    return targets


async def _update(
    conn: AsyncConnection, row: Any, allowed_from: tuple[str, ...], **values: Any
) -> tuple[Any, list[str]]:
    """Write ``values`` to the refund if it is still in one of ``allowed_from`` (a concurrent
    webhook, worker or operator may have moved it on: transitions never go back). Returns the
    row as it is now and the gateways told about a change of status."""
    values.setdefault("updated_at", utcnow())
    result = await conn.execute(
        t.refunds.update()
        .where(t.refunds.c.id == row.id, t.refunds.c.status.in_(allowed_from))
        .values(**values)
    )
    now_row = await _row(conn, row.id)
    if result.rowcount != 1 or now_row.status == row.status:
        return now_row, []
    log.info("refund %s: %s -> %s", row.id, row.status, now_row.status)
    return now_row, await notify(conn, now_row)


def backoff_s(attempts: int, base_s: float, cap_s: float) -> float:
    """Delay before the next try after ``attempts`` failures: exponential, capped, with jitter
    (half to all of it) so refunds failed together in an outage do not retry in lockstep."""
    ceiling = min(cap_s, base_s * (2 ** max(0, attempts - 1)))
    return random.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    backoff_base_s: float
    backoff_max_s: float
    check_interval_s: float
    check_max_s: float
    lease_s: float

    @classmethod
    def from_settings(cls, settings: Any) -> "RetryPolicy":
        return cls(
            max_attempts=settings.refund_max_attempts,
            backoff_base_s=settings.refund_backoff_base_s,
            backoff_max_s=settings.refund_backoff_max_s,
            check_interval_s=settings.refund_check_interval_s,
            check_max_s=settings.refund_check_max_s,
            lease_s=settings.refund_lease_s,
        )

    def next_check(self, row: Any, now: datetime) -> datetime:
        """When to ask the provider again about a refund it has not processed yet: soon at
        first, then less often (a normal-speed UPI refund can take days; webhooks usually say
        first)."""
        age = (now - as_utc(row.created_at)).total_seconds()
        delay = min(self.check_max_s, max(self.check_interval_s, age / 10))
        return now + timedelta(seconds=delay)


def provider_state(status: str) -> str:
    """The provider's word for a refund in ours: processed -> refunded, failed -> failed, anything
    else (created, pending) -> still pending."""
    if status == "processed":
        return REFUNDED
    if status == "failed":
        return FAILED
    return PENDING


async def apply_provider_status(
    conn: AsyncConnection,
    row: Any,
    provider_refund_id: str | None,
    status: str,
    policy: RetryPolicy,
    *,
    error: str | None = None,
) -> tuple[Any, list[str]]:
    """What the provider says of a refund (its answer to our call, a status check, a webhook),
    applied to our row monotonically. Returns the row as it is now and the gateways told."""
    now = utcnow()
    keep_id = row.provider_refund_id or provider_refund_id
    state = provider_state(status)
    if state == REFUNDED:
        # The money went back: true whatever we thought before (even a refund an operator voided
        # or left for review; the note says so).
        if row.status == REFUNDED:
            return row, []
        extra: dict[str, Any] = {}
        if row.status in (VOIDED, MANUAL_REVIEW):
            extra["last_error"] = f"the provider processed it while it was {row.status}"
        return await _update(
            conn,
            row,
            (PENDING, FAILED, MANUAL_REVIEW, VOIDED),
            status=REFUNDED,
            provider_refund_id=keep_id,
            refunded_at=now,
            next_attempt_at=None,
            **extra,
        )
    if state == FAILED:
        if row.status not in DUE_STATES:
            return await _keep_provider_id(conn, row, keep_id)
        return await record_failure(
            conn,
            row,
            error or "the provider reports the refund failed",
            policy,
            provider_refund_id=keep_id,
        )
    # Accepted by the provider, not processed yet: check again later.
    if row.status in DUE_STATES:
        return await _update(
            conn,
            row,
            DUE_STATES,
            status=PENDING,
            provider_refund_id=keep_id,
            next_attempt_at=policy.next_check(row, now),
            last_error=None,
        )
    return await _keep_provider_id(conn, row, keep_id)


async def _keep_provider_id(
    conn: AsyncConnection, row: Any, provider_refund_id: str | None
) -> tuple[Any, list[str]]:
    if provider_refund_id is None or row.provider_refund_id is not None:
        return row, []
    await conn.execute(
        t.refunds.update()
        .where(t.refunds.c.id == row.id, t.refunds.c.provider_refund_id.is_(None))
        .values(provider_refund_id=provider_refund_id, updated_at=utcnow())
    )
    return await _row(conn, row.id), []


async def record_failure(
    conn: AsyncConnection,
    row: Any,
    error: str,
    policy: RetryPolicy,
    *,
    permanent: bool = False,
    provider_refund_id: str | None = None,
) -> tuple[Any, list[str]]:
    """One more failed try: ``failed`` with a backoff, or ``manual_review`` once the tries are used
    up or the provider refused it outright (retrying the same request cannot help)."""
    attempts = row.attempts + 1
    exhausted = permanent or attempts >= policy.max_attempts
    values: dict[str, Any] = {
        "attempts": attempts,
        "last_error": error[:MAX_ERROR],
        "status": MANUAL_REVIEW if exhausted else FAILED,
        "next_attempt_at": None
        if exhausted
        else utcnow()
        + timedelta(seconds=backoff_s(attempts, policy.backoff_base_s, policy.backoff_max_s)),
    }
    if provider_refund_id is not None and row.provider_refund_id is None:
        values["provider_refund_id"] = provider_refund_id
    if exhausted:
        log.warning(
            "refund %s (%s paise) needs an operator after %s tries: %s",
            row.id,
            row.amount,
            attempts,
            error,
        )
    return await _update(conn, row, DUE_STATES, **values)


# --- the worker -------------------------------------------------------------------------------


def _method(provider: str) -> str:
    """The payment method whose provider sends a refund of this provider's payment."""
    return SANDBOX if provider == SANDBOX else "upi"


async def _claim(engine: AsyncEngine, policy: RetryPolicy, batch: int) -> list[Any]:
    """Take up to ``batch`` due refunds and lease them, so no other worker sends them meanwhile."""
    now = utcnow()
    due = sa.and_(
        t.refunds.c.status.in_(DUE_STATES),
        sa.or_(t.refunds.c.next_attempt_at.is_(None), t.refunds.c.next_attempt_at <= now),
    )
    # A look without a lock first (as the closer does): most rounds find nothing, and on SQLite
    # a write transaction (BEGIN IMMEDIATE) every round would hold up every other writer.
    async with engine.connect() as conn:
        if (await conn.scalar(sa.select(t.refunds.c.id).where(due).limit(1))) is None:
            return []
    async with engine.begin() as conn:
        query = (
            sa.select(t.refunds)
            .where(due)
            .order_by(t.refunds.c.next_attempt_at, t.refunds.c.created_at)
            .limit(batch)
        )
        if not is_sqlite(engine):
            query = query.with_for_update(skip_locked=True)
        rows = (await conn.execute(query)).all()
        if rows:
            await conn.execute(
                t.refunds.update()
                .where(t.refunds.c.id.in_([r.id for r in rows]))
                .values(next_attempt_at=now + timedelta(seconds=policy.lease_s))
            )
    return list(rows)


async def _provider_payment_id(conn: AsyncConnection, row: Any) -> str | None:
    if row.provider_payment_id is not None or row.payment_id is None:
        return row.provider_payment_id  # type: ignore[no-any-return]
    # Recorded before the capture reached the cloud: the payment row may know it by now.
    value = await conn.scalar(
        sa.select(t.payments.c.provider_payment_id).where(
            t.payments.c.id == row.payment_id, t.payments.c.tenant_id == row.tenant_id
        )
    )
    return value if isinstance(value, str) else None


async def _send_one(ctx: "CloudContext", row: Any, policy: RetryPolicy) -> list[str]:
    """Send (or check) one leased refund and record the provider's answer."""
    async with ctx.engine.connect() as conn:
        provider_payment_id = await _provider_payment_id(conn, row)
    answer = None
    error: str | None = None
    permanent = False
    try:
        provider = await provider_for(ctx, row.tenant_id, _method(row.provider))
        if provider.name != row.provider:
            permanent = True
            error = (
                f"the payment was made through {row.provider} but the tenant's provider is now "
                f"{provider.name}; nothing was sent"
            )
        else:
            answer = await provider.refund(
                row.id, provider_payment_id, row.amount, order_id=row.order_id
            )
    except ProviderRejected as exc:
        permanent, error = True, f"the provider refused the refund: {exc.message}"
    except CloudError as exc:
        # Unreachable, 5xx, breaker open, not configured right now: nothing was decided at the
        # provider that we know of, and the same key makes the next try safe.
        error = f"{exc.code}: {exc.message}"
    except (OSError, TimeoutError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    async with ctx.engine.begin() as conn:
        current = await _row(conn, row.id, lock=True)
        if current.status not in DUE_STATES:
            # A webhook said processed, or an operator acted, while the call was out.
            return []
        if provider_payment_id is not None and current.provider_payment_id is None:
            await conn.execute(
                t.refunds.update()
                .where(t.refunds.c.id == row.id)
                .values(provider_payment_id=provider_payment_id)
            )
            current = await _row(conn, row.id)
        if answer is None:
            _, woken = await record_failure(
                conn, current, error or "no answer", policy, permanent=permanent
            )
        else:
            _, woken = await apply_provider_status(
                conn, current, answer.provider_refund_id, answer.status, policy
            )
    return woken


async def send_due(ctx: "CloudContext", batch: int = 20) -> int:
    """Send every due refund (pending or failed whose time has come); returns how many."""
    policy = RetryPolicy.from_settings(ctx.settings)
    rows = await _claim(ctx.engine, policy, batch)
    woken: list[str] = []
    for row in rows:
        try:
            woken.extend(await _send_one(ctx, row, policy))
        except Exception:
            # One refund the worker cannot handle (a bug, the database gone mid-way) must not
            # stop the others; its lease runs out and it is tried again later.
            log.exception("refund %s could not be processed; it is tried again later", row.id)
    ctx.hub.wake(woken)
    return len(rows)


async def _next_due_in(engine: AsyncEngine) -> float | None:
    async with engine.connect() as conn:
        due = await conn.scalar(
            sa.select(sa.func.min(t.refunds.c.next_attempt_at)).where(
                t.refunds.c.status.in_(DUE_STATES)
            )
        )
    if due is None:
        return None
    return max(0.0, (as_utc(due) - utcnow()).total_seconds())


async def run_refund_worker(ctx: "CloudContext") -> None:
    hub: ChannelHub = ctx.hub
    while True:
        wait = ctx.settings.worker_poll_interval_s
        try:
            while await send_due(ctx):
                pass
            due_in = await _next_due_in(ctx.engine)
            if due_in is not None:
                wait = min(wait, due_in + 0.01)
        except Exception:
            # Never let the worker die: refunds would silently stop being sent.
            log.exception("refund worker pass failed; retrying")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await hub.workers.wait()
        hub.workers.clear()


# --- operators --------------------------------------------------------------------------------


async def _audit(
    conn: AsyncConnection, tenant_id: str, user_id: str, action: str, refund_id: str, note: str
) -> None:
    await conn.execute(
        t.operator_audit.insert().values(
            id=str(uuid.uuid4()),
            tenant_id=tenant_id,
            user_id=user_id,
            action=action,
            target_type="refund",
            target_id=refund_id,
            note=note[:1000],
            created_at=utcnow(),
        )
    )


async def tenant_refund(conn: AsyncConnection, tenant_id: str, refund_id: str) -> Any:
    """The tenant's refund, locked for the change that follows; another tenant's is a 404."""
    query = sa.select(t.refunds).where(
        t.refunds.c.id == refund_id, t.refunds.c.tenant_id == tenant_id
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    if row is None:
        raise NotFound(f"refund {refund_id} not found")
    return row


async def operator_retry(
    conn: AsyncConnection, tenant_id: str, user_id: str, refund_id: str
) -> tuple[Any, list[str]]:
    """manual_review or failed -> pending, tries counted from zero, due now."""
    row = await tenant_refund(conn, tenant_id, refund_id)
    if row.status not in (MANUAL_REVIEW, FAILED):
        raise RefundNotRetryable(
            f"refund {refund_id} is {row.status}: only a failed refund or one waiting for "
            "review can be retried",
            details={"status": row.status},
        )
    result, woken = await _update(
        conn,
        row,
        (MANUAL_REVIEW, FAILED),
        status=PENDING,
        attempts=0,
        next_attempt_at=utcnow(),
        last_error=None,
    )
    await _audit(
        conn,
        tenant_id,
        user_id,
        "refund.retry",
        refund_id,
        f"retried from {row.status}: {row.amount} paise {row.currency} to be sent again",
    )
    return result, woken


_SETTLED = {
    "refunded_outside": "paid back to the customer outside the provider",
    "not_owed": "not owed to the customer, nothing paid back",
}


async def operator_resolve(
    conn: AsyncConnection,
    tenant_id: str,
    user_id: str,
    refund_id: str,
    outcome: str,
    note: str,
) -> tuple[Any, list[str]]:
    """A refund waiting for review settled by hand: ``refunded_outside`` (the customer was paid
    back another way) -> refunded; ``not_owed`` (e.g. the item did come out) -> voided.

    Only from ``manual_review``: a pending or failed refund may be in flight at the provider, and
    settling it by hand then could pay the customer twice."""
    row = await tenant_refund(conn, tenant_id, refund_id)
    if row.status != MANUAL_REVIEW:
        hint = (
            " (it may be at the provider now; wait for it to end or to need review)"
            if row.status in DUE_STATES
            else ""
        )
        raise RefundNotResolvable(
            f"refund {refund_id} is {row.status}: only a refund waiting for review can be "
            f"resolved by hand{hint}",
            details={"status": row.status},
        )
    now = utcnow()
    values: dict[str, Any] = {"note": note, "resolved_by": user_id, "next_attempt_at": None}
    if outcome == "refunded_outside":
        values |= {"status": REFUNDED, "refunded_at": now}
    else:
        values |= {"status": VOIDED}
    result, woken = await _update(conn, row, (MANUAL_REVIEW,), **values)
    await _audit(
        conn,
        tenant_id,
        user_id,
        f"refund.resolve.{outcome}",
        refund_id,
        f"{row.amount} paise {row.currency} {_SETTLED[outcome]}: {note}",
    )
    return result, woken
