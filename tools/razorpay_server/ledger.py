"""The simulated Razorpay books: accounts, QR codes, payments, refunds, idempotency keys.

Every operation is synchronous and runs on the event loop, so no two requests interleave inside
one; each returns the entity the API answers with and the webhook events it causes, in the
order Razorpay would raise them. Nothing here does I/O.
"""

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tools.razorpay_server import validation
from tools.razorpay_server.entities import (
    Account,
    Event,
    Payment,
    QrCode,
    Refund,
    new_id,
    upi_intent,
    wrap,
)
from tools.razorpay_server.errors import BadRequest, ControlError, NotFound

DEFAULT_VPA = "customer@okhdfcbank"


@dataclass
class Outcome:
    """What an operation answers and which webhook events (for which account) it raised."""

    entity: dict[str, Any]
    account: Account | None = None
    events: list[Event] = field(default_factory=list)


class Ledger:
    def __init__(
        self,
        *,
        clock: Callable[[], float],
        base_url: Callable[[], str],
        min_close_by_s: int = 120,
    ) -> None:
        self._clock = clock
        self._base_url = base_url
        self.min_close_by_s = min_close_by_s
        self.accounts: dict[str, Account] = {}
        self.qr_codes: dict[str, QrCode] = {}
        self.payments: dict[str, Payment] = {}
        self.refunds: dict[str, Refund] = {}
        # (key_id, idempotency key) -> (request fingerprint, refund id)
        self.idempotency: dict[tuple[str, str], tuple[str, str]] = {}

    def now(self) -> int:
        return int(self._clock())

    # -- accounts ---------------------------------------------------------------------------

    def put_account(self, account: Account) -> Account:
        old = self.accounts.get(account.key_id)
        if old is not None:
            # Replacing keys or the webhook of a merchant keeps its account id, as editing a
            # webhook on the dashboard would.
            account.account_id = old.account_id
        self.accounts[account.key_id] = account
        return account

    def authenticate(self, key_id: str, key_secret: str) -> Account | None:
        account = self.accounts.get(key_id)
        if account is None:
            return None
        if not secrets.compare_digest(account.key_secret.encode(), key_secret.encode()):
            return None
        return account

    # -- QR codes ---------------------------------------------------------------------------

    def create_qr(self, account: Account, body: dict[str, Any]) -> Outcome:
        now = self.now()
        req = validation.qr_request(body, now=now, min_close_by_s=self.min_close_by_s)
        qr_id = new_id("qr")
        qr = QrCode(
            id=qr_id,
            key_id=account.key_id,
            created_at=now,
            name=req.name,
            usage=req.usage,
            type=req.type,
            fixed_amount=req.fixed_amount,
            payment_amount=req.payment_amount,
            description=req.description,
            customer_id=req.customer_id,
            close_by=req.close_by,
            notes=req.notes,
            image_url=f"{self._base_url()}/_test/qr_codes/{qr_id}/image.svg",
            image_content=upi_intent(qr_id, req.payment_amount, req.description or ""),
        )
        self.qr_codes[qr_id] = qr
        entity = qr.to_api()
        return Outcome(entity, account, [Event("qr_code.created", {"qr_code": wrap(entity)})])

    def qr_of(self, account: Account, qr_id: str) -> QrCode:
        qr = self.qr_codes.get(qr_id)
        if qr is None or qr.key_id != account.key_id:
            raise NotFound()
        self.expire_due()
        return qr

    def close_qr(self, account: Account, qr_id: str) -> Outcome:
        qr = self.qr_of(account, qr_id)
        if qr.status == "closed":
            raise BadRequest("The QR code is already closed.", field="id")
        qr.close("on_demand", self.now())
        entity = qr.to_api()
        return Outcome(entity, account, [Event("qr_code.closed", {"qr_code": wrap(entity)})])

    def expire_due(self) -> list[QrCode]:
        """Close every active QR whose close_by has passed (close_reason ``auto``). Razorpay
        documents no qr_code.closed webhook for auto-expiry, so none is raised."""
        now = self.now()
        expired = []
        for qr in self.qr_codes.values():
            if qr.status == "active" and qr.close_by is not None and qr.close_by <= now:
                qr.close("auto", qr.close_by)
                expired.append(qr)
        return expired

    def qr_payments(self, account: Account, qr_id: str) -> list[dict[str, Any]]:
        qr = self.qr_of(account, qr_id)
        return [self.payments[p].to_api() for p in reversed(qr.payment_ids)]

    # -- payments ---------------------------------------------------------------------------

    def payment_of(self, account: Account, payment_id: str) -> Payment:
        payment = self.payments.get(payment_id)
        if payment is None or payment.key_id != account.key_id:
            raise NotFound()
        return payment

    def pay(
        self,
        qr_id: str,
        *,
        vpa: str | None = None,
        amount: int | None = None,
        allow_closed: bool = False,
        allow_amount_mismatch: bool = False,
        fail: bool = False,
    ) -> Outcome:
        """Take a payment on a QR as the customer's UPI app would, or refuse as the UPI network
        would. ``allow_closed`` models a payment that lands after the QR closed (the late-payment
        case the cloud must refund); ``fail`` a payment the customer's bank declined."""
        self.expire_due()
        qr = self.qr_codes.get(qr_id)
        if qr is None:
            raise ControlError(f"No QR code {qr_id} on this server; nothing was charged.")
        account = self.accounts[qr.key_id]
        if qr.status == "closed" and not allow_closed:
            raise ControlError(
                f"QR code {qr_id} is closed ({qr.close_reason}); the UPI app refuses it and"
                " nothing was charged."
            )
        if amount is None:
            amount = qr.payment_amount
        if amount is None:
            raise ControlError("This QR code has no fixed amount: send an amount in paise.")
        if not validation.is_int(amount) or amount < validation.MIN_AMOUNT:
            raise ControlError("amount must be an integer of at least 100 paise.", field="amount")
        if qr.fixed_amount and amount != qr.payment_amount and not allow_amount_mismatch:
            raise ControlError(
                f"QR code {qr_id} takes exactly {qr.payment_amount} paise, not {amount};"
                " nothing was charged.",
                field="amount",
            )
        now = self.now()
        payment = Payment(
            id=new_id("pay"),
            key_id=account.key_id,
            qr_code_id=qr.id,
            amount=amount,
            created_at=now,
            vpa=vpa or DEFAULT_VPA,
            email="void@razorpay.com",
            contact="+919000090000",
            customer_id=qr.customer_id,
            notes=dict(qr.notes),  # a QR payment carries the QR's notes (our order id)
            rrn=str(secrets.randbelow(10**12)).zfill(12),
        )
        self.payments[payment.id] = payment
        if fail:
            payment.status = "failed"
            payment.error_code = "BAD_REQUEST_ERROR"
            payment.error_description = "Payment was declined by the customer's bank."
            payment.error_source = "customer"
            payment.error_step = "payment_authorization"
            payment.error_reason = "payment_declined"
            entity = payment.to_api()
            return Outcome(entity, account, [Event("payment.failed", {"payment": wrap(entity)})])
        qr.payment_ids.append(payment.id)
        qr.payments_amount_received += amount
        qr.payments_count_received += 1
        entity = payment.to_api()
        events = [
            Event("payment.captured", {"payment": wrap(entity)}),
            Event("qr_code.credited", {"payment": wrap(entity), "qr_code": wrap(qr.to_api())}),
        ]
        if qr.usage == "single_use" and qr.status == "active":
            qr.close("paid", now)
            events.append(Event("qr_code.closed", {"qr_code": wrap(qr.to_api())}))
        return Outcome(entity, account, events)

    # -- refunds ----------------------------------------------------------------------------

    def create_refund(
        self,
        account: Account,
        payment_id: str,
        body: dict[str, Any],
        idempotency_key: str | None,
    ) -> tuple[Outcome, bool]:
        """Create a refund; answers (outcome, created). A repeated idempotency key with the same
        request answers the refund made the first time (created=False, no new events)."""
        key = validation.idempotency_key(idempotency_key)
        payment = self.payment_of(account, payment_id)
        req = validation.refund_request(body)
        fingerprint = json.dumps([payment_id, body], sort_keys=True, separators=(",", ":"))
        if key is not None:
            seen = self.idempotency.get((account.key_id, key))
            if seen is not None:
                if seen[0] != fingerprint:
                    raise BadRequest(
                        "Different request with the same idempotency key has already been"
                        " processed."
                    )
                return Outcome(self.refunds[seen[1]].to_api(), account), False
        if payment.status != "captured":
            raise BadRequest("Only a captured payment can be refunded.", field="payment_id")
        if payment.refundable <= 0:
            raise BadRequest("The payment has been fully refunded already.")
        amount = payment.refundable if req.amount is None else req.amount
        if amount > payment.refundable:
            raise BadRequest(
                f"The refund amount ({amount}) is greater than the refundable amount of the"
                f" payment ({payment.refundable}).",
                field="amount",
            )
        refund = Refund(
            id=new_id("rfnd"),
            key_id=account.key_id,
            payment_id=payment.id,
            amount=amount,
            created_at=self.now(),
            notes=req.notes,
            receipt=req.receipt,
            speed_requested=req.speed,
            speed_processed="instant" if req.speed == "optimum" else "normal",
        )
        self.refunds[refund.id] = refund
        if key is not None:
            self.idempotency[(account.key_id, key)] = (fingerprint, refund.id)
        # A pending refund already counts against the payment, so a second refund cannot
        # exceed what is left; a failed one gives the amount back.
        payment.amount_refunded += amount
        payment.refund_ids.append(refund.id)
        entity = refund.to_api()
        event = Event("refund.created", {"refund": wrap(entity), "payment": wrap(payment.to_api())})
        return Outcome(entity, account, [event]), True

    def refund_of(self, account: Account, refund_id: str) -> Refund:
        refund = self.refunds.get(refund_id)
        if refund is None or refund.key_id != account.key_id:
            raise NotFound()
        return refund

    def payment_refunds(self, account: Account, payment_id: str) -> list[dict[str, Any]]:
        payment = self.payment_of(account, payment_id)
        return [self.refunds[r].to_api() for r in reversed(payment.refund_ids)]

    def settle_refund(self, refund_id: str, *, fail: bool) -> Outcome | None:
        """Move a pending refund to processed (with an ARN) or failed. None if it was already
        settled (a forced settle raced the timer)."""
        refund = self.refunds.get(refund_id)
        if refund is None:
            raise ControlError(f"No refund {refund_id} on this server.")
        if refund.status != "pending":
            return None
        payment = self.payments[refund.payment_id]
        account = self.accounts[refund.key_id]
        if fail:
            refund.status = "failed"
            payment.amount_refunded -= refund.amount
            name = "refund.failed"
        else:
            refund.status = "processed"
            refund.arn = str(secrets.randbelow(10**14)).zfill(14)
            name = "refund.processed"
        entity = refund.to_api()
        event = Event(name, {"refund": wrap(entity), "payment": wrap(payment.to_api())})
        return Outcome(entity, account, [event])

    # -- test dump --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        self.expire_due()
        return {
            "accounts": [a.public() for a in self.accounts.values()],
            "qr_codes": [q.to_api() | {"key_id": q.key_id} for q in self.qr_codes.values()],
            "payments": [
                p.to_api() | {"key_id": p.key_id, "qr_code_id": p.qr_code_id}
                for p in self.payments.values()
            ],
            "refunds": [r.to_api() | {"key_id": r.key_id} for r in self.refunds.values()],
        }
