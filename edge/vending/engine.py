"""``VendEngine``: the order state machine and the dispense loop.

Orders move ``awaiting_payment -> paid -> dispensing -> completed | partially_completed |
failed`` (or ``awaiting_payment -> cancelled``). Each machine dispenses one unit at a time: the
engine asks the store for the next unit's command (persisted and signed in one transaction
before it is ever published), publishes it, re-publishes the same bytes every
``dispense_resend_s`` until a result is recorded, and records ``unknown`` after
``dispense_give_up_s``. A unit never gets a second command id, so the motor runs at most once
for it.

When every unit of a paid order has an outcome, the store ends it (``edge.store.ledger``): all
dispensed ``completed``, some ``partially_completed``, none ``failed``, and in the same
transaction gives back the value of the units that did not come out: a ``refund.request``
(``rf-<order>-undispensed``, or ``rf-<order>-held`` for unknown units under the tenant's
``review`` policy) for upi/sandbox, machine credit for cash (unknown cash units under
``review`` are held, not credited). ``refund_pending`` is only found on orders from gateways
before refunds; no new order enters it.

Electronic orders (``upi``, ``sandbox``) ask the cloud for a payment through the
``gateway_payments`` circuit breaker (``contracts.breaker``): after
``payments_breaker_failures`` failures or timeouts in a row it opens, and a UPI order is refused
at once (created and cancelled with ``payment_unavailable``, nothing charged, cash offered)
instead of waiting for a cloud that is not answering; ``payment_methods`` tells the kiosk
beforehand which methods work now.
"""

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NoReturn, Protocol

from contracts.breaker import CircuitBreaker, CircuitOpen
from contracts.orders import ELECTRONIC_METHODS, PaymentMethod
from contracts.sync import MoneyPolicy, PaymentCreate, PaymentIntent
from edge.backoff import Backoff
from edge.errors import CloudRejected, CloudUnavailable, DeviceLinkError, PaymentUnavailable
from edge.metrics import BREAKER_STATE_VALUES, GatewayMetrics
from edge.settings import GatewaySettings
from edge.store import GatewayStore
from edge.store.ledger import CANCEL_PAYMENT_UNAVAILABLE
from edge.store.views import NewOrder, OrderCapability, OrderView, PendingCommand
from edge.sync.ports import PaymentsPort

log = logging.getLogger(__name__)

PAYMENTS_BREAKER = "gateway_payments"

# Why an electronic method cannot be used now (PaymentUnavailable.reason, payment_methods).
OFFLINE = "offline"
SERVICE_UNAVAILABLE = "payment_service_unavailable"
NOT_ENABLED = "not_enabled"
REFUSED = "refused"

# Every message says what happened to the money (nothing was taken) and what still works (cash).
_UNAVAILABLE_TEXT = {
    OFFLINE: "UPI is unavailable: this machine has no connection to the payment service. "
    "Nothing was charged; please pay with cash.",
    SERVICE_UNAVAILABLE: "UPI is unavailable right now: the payment service is not answering. "
    "Nothing was charged; please pay with cash.",
    NOT_ENABLED: "This way of paying is not offered at this machine. Nothing was charged; please "
    "pay with cash.",
    REFUSED: "The payment service refused this UPI payment. Nothing was charged; please pay "
    "with cash.",
}


@dataclass(frozen=True, slots=True)
class MethodAvailability:
    """Whether the kiosk can offer a payment method at a machine now, and if not why."""

    method: PaymentMethod
    available: bool
    reason: str | None = None
    message: str | None = None
    retry_in_s: float | None = None


class CommandSender(Protocol):
    async def send_dispense(self, machine_id: str, payload: bytes) -> None: ...


class VendEngine:
    def __init__(
        self,
        settings: GatewaySettings,
        store: GatewayStore,
        sender: CommandSender,
        payments: PaymentsPort | None,
        metrics: GatewayMetrics,
        *,
        payments_ready: Callable[[], bool] | None = None,
        breaker_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``payments_ready`` says whether the payments port can be asked at all now (the cloud
        link is enrolled); a port that is not ready is "offline", not a breaker failure.
        ``breaker_clock`` drives the payments breaker's recovery (tests step it)."""
        self._settings = settings
        self._store = store
        self._sender = sender
        self._payments = payments
        self._payments_ready = payments_ready
        self._metrics = metrics
        self._workers: dict[str, asyncio.Task[None]] = {}
        self.payments_breaker = CircuitBreaker(
            PAYMENTS_BREAKER,
            failure_threshold=settings.payments_breaker_failures,
            recovery_s=settings.payments_breaker_recovery_s,
            call_timeout_s=settings.payments_call_timeout_s,
            # A 4xx means the cloud answered: only "cannot reach / 5xx" (503
            # provider_unavailable included) and timeouts count against it.
            failure_types=(CloudUnavailable,),
            clock=breaker_clock,
            on_change=self._breaker_changed,
        )
        metrics.breaker_state.labels(breaker=PAYMENTS_BREAKER).set(0)

    @property
    def breakers(self) -> tuple[CircuitBreaker, ...]:
        return (self.payments_breaker,)

    def _breaker_changed(self, name: str, old: str, new: str) -> None:
        self._metrics.breaker_state.labels(breaker=name).set(BREAKER_STATE_VALUES[new])
        self._metrics.breaker_transitions.labels(breaker=name, state=new).inc()
        if new == "open":
            log.warning("breaker %s opened: UPI is refused at once, cash still sold", name)
        else:
            log.info("breaker %s: %s -> %s", name, old, new)

    # --- orders --------------------------------------------------------------------------------

    async def create_order(
        self,
        order: NewOrder,
        idempotency_key: str | None,
        request_hash: str,
        capability: OrderCapability | None = None,
    ) -> tuple[OrderView, bool]:
        view, created = await self._store.create_order(
            order, idempotency_key, request_hash, capability
        )
        if not created:
            return view, False
        self._metrics.orders_created.labels(payment_method=order.payment_method.value).inc()
        if order.payment_method in ELECTRONIC_METHODS:
            view = await self._request_payment(view)
        return view, True

    # --- payment methods -----------------------------------------------------------------------

    async def payment_methods(self, machine_id: str) -> list[MethodAvailability]:
        """What the kiosk may offer at ``machine_id`` now: cash always; UPI only when the
        tenant enabled it, the cloud link is up and the payments breaker lets a call through;
        the sandbox (tests) only when the cloud runs it, under the last two."""
        policy = await self._store.money_policy(machine_id)
        methods = [MethodAvailability(PaymentMethod.CASH, True)]
        for method in (PaymentMethod.UPI, PaymentMethod.SANDBOX):
            reason = self._unavailable(method, policy)
            if reason is None:
                methods.append(MethodAvailability(method, True))
            else:
                methods.append(
                    MethodAvailability(
                        method,
                        False,
                        reason,
                        _UNAVAILABLE_TEXT[reason],
                        self._retry_in(reason),
                    )
                )
        return methods

    def _unavailable(self, method: PaymentMethod, policy: MoneyPolicy) -> str | None:
        if method is PaymentMethod.UPI and not policy.upi_enabled:
            return NOT_ENABLED
        if method is PaymentMethod.SANDBOX and not policy.sandbox_enabled:
            return NOT_ENABLED
        if self._payments is None or (
            self._payments_ready is not None and not self._payments_ready()
        ):
            return OFFLINE
        if not self.payments_breaker.allows():
            return SERVICE_UNAVAILABLE
        return None

    def _retry_in(self, reason: str) -> float | None:
        if reason != SERVICE_UNAVAILABLE:
            return None
        return round(self.payments_breaker.retry_in_s(), 3)

    async def _request_payment(self, view: OrderView) -> OrderView:
        """Ask the cloud for the order's payment, or cancel the order (stock released, nothing
        charged) and raise ``PaymentUnavailable``: at once when the method cannot work now."""
        method = view.payment_method
        policy = await self._store.money_policy(view.machine_id)
        reason = self._unavailable(method, policy)
        if reason is not None:
            await self._refuse(view, reason, fast=True)
        assert self._payments is not None  # _unavailable said OFFLINE otherwise
        payments = self._payments
        request = PaymentCreate(
            order_id=view.id,
            machine_id=view.machine_id,
            amount=view.total_amount,
            currency=view.currency,
            method="upi" if method is PaymentMethod.UPI else "sandbox",
            idempotency_key=view.id,
            pay_within_s=math.ceil(self._settings.order_payment_timeout_s),
        )

        async def create() -> PaymentIntent:
            return await payments.create_payment(request)

        try:
            intent = await self.payments_breaker.call(create)
        except CircuitOpen:
            # Opened (or a half-open probe started) since the check above.
            await self._refuse(view, SERVICE_UNAVAILABLE, fast=True)
        except (CloudUnavailable, TimeoutError) as exc:
            # A payment the cloud made after all is closed when it sees the order cancelled.
            log.warning("order %s: no payment from the cloud: %r", view.id, exc)
            await self._refuse(view, SERVICE_UNAVAILABLE, cause=exc)
        except CloudRejected as exc:
            log.warning("order %s: the cloud refused its payment: %s", view.id, exc)
            await self._refuse(view, REFUSED, cause=exc)
        if intent.status == "failed" or intent.order_id != view.id:
            await self._refuse(view, REFUSED)
        return await self._store.attach_payment(intent)

    async def _refuse(
        self, view: OrderView, reason: str, *, fast: bool = False, cause: Exception | None = None
    ) -> NoReturn:
        await self._store.cancel_order(view.id, CANCEL_PAYMENT_UNAVAILABLE)
        if fast:
            self._metrics.payments_refused_fast.labels(reason=reason).inc()
        raise PaymentUnavailable(
            _UNAVAILABLE_TEXT[reason], reason=reason, retry_in_s=self._retry_in(reason)
        ) from cause

    async def cancel(self, order_id: str) -> OrderView:
        return await self._store.cancel_order(order_id)

    async def cancel_with_token(self, order_id: str, presented_hash: str | None) -> OrderView:
        """A kiosk API cancel: allowed only with the order's token."""
        return await self._store.cancel_order_with_token(order_id, presented_hash)

    # --- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Dispatch paid orders to per-machine workers and expire unpaid ones, until cancelled.
        Also resumes whatever a previous run left unfinished (it is all in the store)."""
        async with asyncio.TaskGroup() as group:
            next_expiry = 0.0
            while True:
                seen = self._store.changes.seq
                try:
                    if time.monotonic() >= next_expiry:
                        next_expiry = time.monotonic() + self._settings.engine_tick_s
                        await self._store.expire_orders(self._settings.order_payment_timeout_s)
                    for order_id, machine_id in await self._store.orders_to_dispense():
                        worker = self._workers.get(machine_id)
                        if worker is None or worker.done():
                            self._workers[machine_id] = group.create_task(
                                self._machine_worker(machine_id, order_id),
                                name=f"vend-{machine_id}",
                            )
                except Exception:
                    log.exception("vend dispatcher failed; retrying")
                await self._store.changes.wait_any(seen, self._settings.engine_tick_s)

    async def _machine_worker(self, machine_id: str, first: str | None = None) -> None:
        """``first``: the machine's next order as the dispatcher just read it (not read again)."""
        backoff = Backoff(1.0, self._settings.sync_backoff_max_s)
        while True:
            try:
                if first is not None:
                    pending, first = [first], None
                else:
                    pending = [
                        o for o, m in await self._store.orders_to_dispense() if m == machine_id
                    ]
                if not pending:
                    return
                await self._dispense_order(pending[0])
                backoff.reset()
            except Exception:
                delay = backoff.next()
                log.exception("vend worker for %s failed; retry in %.1fs", machine_id, delay)
                await asyncio.sleep(delay)

    async def _dispense_order(self, order_id: str) -> None:
        while True:
            command = await self._store.next_command(
                order_id, self._settings.dispense_command_ttl_s
            )
            if command is None:
                order = await self._store.get_order(order_id)
                log.info("order %s finished: %s", order_id, order.status.value)
                return
            await self._drive(command)

    async def _drive(self, command: PendingCommand) -> None:
        """Send until the unit's outcome is recorded, or record it as unknown."""
        settings = self._settings
        loop = asyncio.get_running_loop()
        age = (datetime.now(UTC) - command.sent_at).total_seconds()
        remaining = settings.dispense_give_up_s - age
        if command.resumed:
            # After a restart the device may hold an unacked result: give it one resend period.
            remaining = max(remaining, settings.dispense_resend_s)
        deadline = loop.time() + remaining
        next_send = loop.time()
        first = not command.resumed
        fresh = first  # created just now and never published: it cannot have a result yet
        while True:
            seen = self._store.changes.order_seq(command.order_id)
            if not fresh and await self._store.command_result(command.cmd_id) is not None:
                return
            fresh = False
            now = loop.time()
            if now >= deadline:
                outcome = await self._store.record_timeout(command.machine_id, command.cmd_id)
                if outcome.status == "applied":
                    self._metrics.dispense_results.labels(result="unknown").inc()
                    log.warning("dispense %s: no result, recorded as unknown", command.cmd_id)
                return
            if now >= next_send:
                try:
                    await self._sender.send_dispense(command.machine_id, command.payload)
                    self._metrics.commands_sent.labels(kind="first" if first else "resend").inc()
                    first = False
                except DeviceLinkError as exc:
                    log.warning("dispense %s not sent: %s", command.cmd_id, exc)
                next_send = now + settings.dispense_resend_s
            wait = max(min(next_send, deadline) - loop.time(), 0.0)
            await self._store.changes.wait_order(command.order_id, seen, wait)


__all__ = ["PAYMENTS_BREAKER", "CommandSender", "MethodAvailability", "VendEngine"]
