"""``VendEngine``: the order state machine and the dispense loop.

Orders move ``awaiting_payment -> paid -> dispensing -> completed | refund_pending`` (or
``awaiting_payment -> cancelled``). Each machine dispenses one unit at a time: the engine asks the
store for the next unit's command (persisted and signed in one transaction before it is ever
published), publishes it, re-publishes the same bytes every ``dispense_resend_s`` until a result
is recorded, and records ``unknown`` after ``dispense_give_up_s``. A unit never gets a second
command id, so the motor runs at most once for it.
"""

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Protocol

from contracts.orders import PaymentMethod
from contracts.sync import PaymentCreate
from edge.backoff import Backoff
from edge.errors import CloudRejected, CloudUnavailable, DeviceLinkError, PaymentUnavailable
from edge.metrics import GatewayMetrics
from edge.settings import GatewaySettings
from edge.store import GatewayStore
from edge.store.ledger import CANCEL_PAYMENT_UNAVAILABLE
from edge.store.views import NewOrder, OrderCapability, OrderView, PendingCommand
from edge.sync.ports import PaymentsPort

log = logging.getLogger(__name__)


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
    ) -> None:
        self._settings = settings
        self._store = store
        self._sender = sender
        self._payments = payments
        self._metrics = metrics
        self._workers: dict[str, asyncio.Task[None]] = {}

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
        if order.payment_method is PaymentMethod.SANDBOX:
            view = await self._request_payment(view)
        return view, True

    async def _request_payment(self, view: OrderView) -> OrderView:
        if self._payments is None:
            await self._store.cancel_order(view.id, CANCEL_PAYMENT_UNAVAILABLE)
            raise PaymentUnavailable("no cloud link: only cash is accepted offline")
        request = PaymentCreate(
            order_id=view.id,
            machine_id=view.machine_id,
            amount=view.total_amount,
            currency=view.currency,
            method="sandbox",
            idempotency_key=view.id,
        )
        try:
            intent = await self._payments.create_payment(request)
        except (CloudUnavailable, CloudRejected) as exc:
            await self._store.cancel_order(view.id, CANCEL_PAYMENT_UNAVAILABLE)
            raise PaymentUnavailable("the payment service cannot be reached") from exc
        if intent.status == "failed" or intent.order_id != view.id:
            await self._store.cancel_order(view.id, CANCEL_PAYMENT_UNAVAILABLE)
            raise PaymentUnavailable("the payment service refused the payment")
        return await self._store.attach_payment(intent)

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
                    for _order_id, machine_id in await self._store.orders_to_dispense():
                        worker = self._workers.get(machine_id)
                        if worker is None or worker.done():
                            self._workers[machine_id] = group.create_task(
                                self._machine_worker(machine_id), name=f"vend-{machine_id}"
                            )
                except Exception:
                    log.exception("vend dispatcher failed; retrying")
                await self._store.changes.wait_any(seen, self._settings.engine_tick_s)

    async def _machine_worker(self, machine_id: str) -> None:
        backoff = Backoff(1.0, self._settings.sync_backoff_max_s)
        while True:
            try:
                pending = [o for o, m in await self._store.orders_to_dispense() if m == machine_id]
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
        while True:
            seen = self._store.changes.order_seq(command.order_id)
            if await self._store.command_result(command.cmd_id) is not None:
                return
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


__all__ = ["CommandSender", "VendEngine"]
