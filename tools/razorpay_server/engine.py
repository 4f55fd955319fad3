"""What the server does, independent of HTTP: the ledger's operations plus their side effects
(webhooks published, refunds settled later, QR codes expired on time) and a change signal that
tests wait on instead of sleeping."""

import asyncio
from collections.abc import Callable
from typing import Any

from tools.razorpay_server.entities import Account
from tools.razorpay_server.errors import ControlError
from tools.razorpay_server.faults import FaultTable
from tools.razorpay_server.ledger import Ledger, Outcome
from tools.razorpay_server.tasks import TaskOwner
from tools.razorpay_server.webhooks import WebhookDispatcher


class Changes:
    """Wakes every waiter whenever anything in the server changed."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait_until(self, predicate: Callable[[], bool], within: float) -> None:
        async with asyncio.timeout(within):
            while not predicate():
                await self._event.wait()


class Engine:
    def __init__(
        self,
        *,
        ledger: Ledger,
        dispatcher: WebhookDispatcher,
        tasks: TaskOwner,
        changes: Changes,
        refund_delay_s: float | None,
    ) -> None:
        self.ledger = ledger
        self.dispatcher = dispatcher
        self.faults = FaultTable()
        self.changes = changes
        self.refund_delay_s = refund_delay_s
        self.closing = asyncio.Event()
        self._tasks = tasks

    def _publish(self, outcome: Outcome) -> dict[str, Any]:
        if outcome.account is not None and outcome.events:
            self.dispatcher.publish(outcome.account, outcome.events)
        self.changes.notify()
        return outcome.entity

    # -- operations behind the REST API --------------------------------------------------------

    def create_qr(self, account: Account, body: dict[str, Any]) -> dict[str, Any]:
        return self._publish(self.ledger.create_qr(account, body))

    def close_qr(self, account: Account, qr_id: str) -> dict[str, Any]:
        return self._publish(self.ledger.close_qr(account, qr_id))

    def create_refund(
        self, account: Account, payment_id: str, body: dict[str, Any], key: str | None
    ) -> dict[str, Any]:
        outcome, created = self.ledger.create_refund(account, payment_id, body, key)
        if not created:
            return outcome.entity
        entity = self._publish(outcome)
        fail = self.dispatcher.mode.fail_refunds
        if self.refund_delay_s is not None:
            self._tasks.spawn(self._settle_later(entity["id"], fail), f"settle:{entity['id']}")
        return entity

    async def _settle_later(self, refund_id: str, fail: bool) -> None:
        assert self.refund_delay_s is not None
        await asyncio.sleep(self.refund_delay_s)
        self.settle_refund(refund_id, fail=fail)

    # -- test controls -------------------------------------------------------------------------

    def put_account(self, account: Account) -> Account:
        account = self.ledger.put_account(account)
        self.changes.notify()
        return account

    def pay(self, qr_id: str, **options: Any) -> dict[str, Any]:
        return self._publish(self.ledger.pay(qr_id, **options))

    def settle_refund(self, refund_id: str, *, fail: bool) -> dict[str, Any]:
        outcome = self.ledger.settle_refund(refund_id, fail=fail)
        if outcome is None:
            raise ControlError(f"Refund {refund_id} is already settled.")
        return self._publish(outcome)

    def expire_qr(self, qr_id: str) -> dict[str, Any]:
        """Bring a QR's close_by to now so it expires at once (close_reason auto)."""
        qr = self.ledger.qr_codes.get(qr_id)
        if qr is None:
            raise ControlError(f"No QR code {qr_id} on this server.")
        if qr.status != "active":
            raise ControlError(f"QR code {qr_id} is already closed ({qr.close_reason}).")
        qr.close_by = self.ledger.now()
        self.ledger.expire_due()
        self.changes.notify()
        return qr.to_api()

    async def expire_loop(self, interval_s: float) -> None:
        """Close QR codes at their close_by even when nobody asks about them."""
        while True:
            await asyncio.sleep(interval_s)
            if self.ledger.expire_due():
                self.changes.notify()
