"""Webhook delivery: Razorpay's event envelope, HMAC-SHA256 signature, retries, and the
misbehaviours a receiver must survive (duplicates, reversed order, lateness, holds, drops).

Each action (a payment, a refund settling, a close) publishes its events as one batch. A batch
is delivered by one task, first attempts in order (reversed on demand), so a test can rely on
the order of first arrival; an event whose first attempt fails is retried by its own task with
capped, jittered backoff, as Razorpay retries each event on its own. Every event keeps its id
and its exact body bytes across retries, duplicates and redeliveries.
"""

import asyncio
import hashlib
import hmac
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from types import TracebackType
from typing import Any

import aiohttp

from tools.razorpay_server.entities import Account, Event, new_id
from tools.razorpay_server.errors import ControlError
from tools.razorpay_server.tasks import TaskOwner

DEFAULT_RETRY_DELAYS: tuple[float, ...] = (5.0, 15.0, 60.0, 300.0, 900.0)


def sign(body: bytes, secret: str) -> str:
    """``X-Razorpay-Signature``: hex HMAC-SHA256 of the raw body under the webhook secret."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class WebhookMode:
    duplicate: int = 0  # extra copies of every event, same id and body
    concurrent: bool = False  # send those copies at the same time as the original
    reverse: bool = False  # first attempts of one action's events in reverse order
    delay_s: float = 0.0  # hold every batch this long before its first attempt
    hold: bool = False  # queue batches until release()
    drop: bool = False  # never send (the log says "dropped"; redeliver can still send)
    fail_refunds: bool = False  # new refunds end "failed" instead of "processed"

    def update(self, changes: dict[str, Any]) -> "WebhookMode":
        known = {f.name: f.type for f in fields(self)}
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise ControlError(f"unknown webhook mode field(s): {', '.join(unknown)}")
        for name, value in changes.items():
            current = getattr(self, name)
            if isinstance(current, bool):
                if not isinstance(value, bool):
                    raise ControlError(f"{name} must be true or false", field=name)
            elif isinstance(current, int):
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ControlError(f"{name} must be a non-negative integer", field=name)
            elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ControlError(f"{name} must be a non-negative number", field=name)
        return replace(self, **changes)


@dataclass
class Attempt:
    at: float
    status: int | None
    error: str | None
    copy: bool = False


@dataclass
class Delivery:
    event_id: str
    event: str
    account_id: str
    key_id: str
    url: str | None
    body: bytes
    signature: str
    created_at: int
    state: str = "pending"  # pending|held|delivered|failed|dropped|no_url
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def last_status(self) -> int | None:
        return self.attempts[-1].status if self.attempts else None

    def public(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event": self.event,
            "account_id": self.account_id,
            "key_id": self.key_id,
            "url": self.url,
            "state": self.state,
            "attempts": len(self.attempts),
            "last_status": self.last_status,
            "last_error": self.attempts[-1].error if self.attempts else None,
            "history": [asdict(a) for a in self.attempts],
            "created_at": self.created_at,
            "body": json.loads(self.body),
        }


class WebhookDispatcher:
    def __init__(
        self,
        *,
        clock: Callable[[], float],
        on_change: Callable[[], None],
        retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
        jitter: float = 0.2,
        timeout_s: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        if any(d < 0 for d in retry_delays):
            raise ValueError("retry delays must not be negative")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        self._clock = clock
        self._on_change = on_change
        self.retry_delays = tuple(retry_delays)
        self._jitter = jitter
        self._timeout_s = timeout_s
        self._rng = rng or random.Random()
        self.mode = WebhookMode()
        self.log: dict[str, Delivery] = {}  # event id -> delivery, in creation order
        self._held: list[tuple[list[Delivery], WebhookMode]] = []
        self._tasks = TaskOwner("webhooks")
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "WebhookDispatcher":
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout_s))
        try:
            await self._tasks.__aenter__()
        except BaseException:
            await self._session.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._tasks.__aexit__(exc_type, exc, tb)
        finally:
            if self._session is not None:
                await self._session.close()

    # -- publishing -------------------------------------------------------------------------

    def publish(self, account: Account, events: Sequence[Event]) -> list[Delivery]:
        """Address, sign and log the events of one action and schedule their delivery."""
        batch = []
        for event in events:
            if event.name not in account.events:
                continue
            created_at = int(self._clock())
            body = json.dumps(
                event.body(account.account_id, created_at), separators=(",", ":")
            ).encode()
            delivery = Delivery(
                event_id=new_id("evt"),
                event=event.name,
                account_id=account.account_id,
                key_id=account.key_id,
                url=account.webhook_url,
                body=body,
                signature=sign(body, account.webhook_secret),
                created_at=created_at,
            )
            self.log[delivery.event_id] = delivery
            if delivery.url is None:
                delivery.state = "no_url"
                continue
            batch.append(delivery)
        if batch:
            self._dispatch(batch, self.mode)
        self._on_change()
        return batch

    def _dispatch(self, batch: list[Delivery], mode: WebhookMode) -> None:
        if mode.drop:
            for d in batch:
                d.state = "dropped"
            return
        if mode.hold:
            for d in batch:
                d.state = "held"
            self._held.append((batch, mode))
            return
        ordered = list(reversed(batch)) if mode.reverse else list(batch)
        self._tasks.spawn(self._send_batch(ordered, mode), f"batch:{ordered[0].event_id}")

    def release(self) -> int:
        """Send every held batch now (with the mode it was published under, minus the hold)."""
        held, self._held = self._held, []
        for batch, mode in held:
            for d in batch:
                d.state = "pending"
            self._dispatch(batch, replace(mode, hold=False))
        self._on_change()
        return sum(len(batch) for batch, _ in held)

    def redeliver(self, event_id: str) -> Delivery:
        """Send one logged event again, same id and body, whatever its state."""
        delivery = self.log.get(event_id)
        if delivery is None:
            raise ControlError(f"No webhook event {event_id} in the delivery log.")
        if delivery.url is None:
            raise ControlError(f"Account of event {event_id} has no webhook URL.")
        delivery.state = "pending"
        self._tasks.spawn(self._send_batch([delivery], WebhookMode()), f"redeliver:{event_id}")
        self._on_change()
        return delivery

    def set_mode(self, changes: dict[str, Any]) -> WebhookMode:
        self.mode = self.mode.update(changes)
        return self.mode

    @property
    def held(self) -> int:
        return sum(len(batch) for batch, _ in self._held)

    # -- sending ----------------------------------------------------------------------------

    async def _send_batch(self, batch: list[Delivery], mode: WebhookMode) -> None:
        if mode.delay_s:
            await asyncio.sleep(mode.delay_s)
        for delivery in batch:
            if mode.duplicate and mode.concurrent:
                results = await asyncio.gather(
                    self._attempt(delivery),
                    *(self._attempt(delivery, copy=True) for _ in range(mode.duplicate)),
                )
                ok = results[0]
            else:
                ok = await self._attempt(delivery)
                for _ in range(mode.duplicate):
                    await self._attempt(delivery, copy=True)
            if ok:
                delivery.state = "delivered"
                self._on_change()
            else:
                self._tasks.spawn(self._retry(delivery), f"retry:{delivery.event_id}")

    async def _retry(self, delivery: Delivery) -> None:
        for delay in self.retry_delays:
            await asyncio.sleep(self._rng.uniform(delay * (1 - self._jitter), delay))
            if await self._attempt(delivery):
                delivery.state = "delivered"
                self._on_change()
                return
        delivery.state = "failed"
        self._on_change()

    async def _attempt(self, delivery: Delivery, *, copy: bool = False) -> bool:
        assert self._session is not None and delivery.url is not None
        headers = {
            "Content-Type": "application/json",
            "X-Razorpay-Signature": delivery.signature,
            "X-Razorpay-Event-Id": delivery.event_id,
            "User-Agent": "Razorpay-Webhook/v1 (vending-fleet test server)",
        }
        status: int | None = None
        error: str | None = None
        try:
            async with self._session.post(delivery.url, data=delivery.body, headers=headers) as r:
                status = r.status
                await r.read()
        except TimeoutError:
            error = f"no answer within {self._timeout_s} s"
        except aiohttp.ClientError as exc:
            error = f"{type(exc).__name__}: {exc}"
        delivery.attempts.append(Attempt(self._clock(), status, error, copy))
        self._on_change()
        return status is not None and 200 <= status < 300
