"""Razorpay entities as the API shows them: QR code, payment, refund, event, collection.

Field names, types and value sets follow Razorpay's published entity references for the subset
we use (UPI QR codes, captured UPI payments, normal refunds). Amounts are integers in paise.
"""

import secrets
import string
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

_ID_ALPHABET = string.ascii_letters + string.digits

QrStatus = Literal["active", "closed"]
CloseReason = Literal["on_demand", "paid", "auto"]
RefundStatus = Literal["pending", "processed", "failed"]
Notes = dict[str, Any]

# The payee address and merchant category shown in every UPI intent string; a test server has
# no merchant, so these are fixed, obviously fake values.
PAYEE_VPA = "rzr.vendingtest@icic"
PAYEE_NAME = "Vending Test Merchant"
MERCHANT_CATEGORY = "5814"


def new_id(prefix: str) -> str:
    """A Razorpay-style id: prefix, underscore, 14 base62 characters (``qr_HMsVL8HOpbMcjU``)."""
    return f"{prefix}_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(14))


def rupees(paise: int) -> str:
    return f"{paise // 100}.{paise % 100:02d}"


def upi_intent(qr_id: str, amount: int | None, note: str) -> str:
    """The ``upi://pay`` string a UPI app reads from the QR (what Razorpay returns as
    ``image_content``): payee, transaction reference derived from the QR id, amount in rupees."""
    params = [
        ("pa", PAYEE_VPA),
        ("pn", PAYEE_NAME),
        ("tr", "RZP" + qr_id.removeprefix("qr_") + "qrv2"),
        ("tn", note or "Payment"),
        ("cu", "INR"),
        ("mc", MERCHANT_CATEGORY),
    ]
    if amount is not None:
        params.append(("am", rupees(amount)))
    return "upi://pay?" + "&".join(f"{k}={quote(v, safe='@.')}" for k, v in params)


# The events a merchant's webhook is subscribed to unless told otherwise: the ones the vending
# cloud handles (Razorpay sends only subscribed events).
DEFAULT_EVENTS = frozenset(
    {
        "payment.captured",
        "payment.failed",
        "qr_code.credited",
        "qr_code.closed",
        "refund.created",
        "refund.processed",
        "refund.failed",
    }
)


@dataclass
class Account:
    """One merchant: API keys plus the webhook endpoint and secret configured on its dashboard."""

    key_id: str
    key_secret: str
    webhook_secret: str
    webhook_url: str | None = None
    events: frozenset[str] = DEFAULT_EVENTS
    account_id: str = field(default_factory=lambda: new_id("acc"))

    def public(self) -> dict[str, Any]:
        # Secrets never leave the server, not even in the test state dump.
        return {
            "key_id": self.key_id,
            "account_id": self.account_id,
            "webhook_url": self.webhook_url,
            "events": sorted(self.events),
        }


@dataclass
class QrCode:
    id: str
    key_id: str
    created_at: int
    name: str | None
    usage: str
    type: str
    fixed_amount: bool
    payment_amount: int | None
    description: str | None
    customer_id: str | None
    close_by: int | None
    notes: Notes
    image_url: str
    image_content: str
    status: QrStatus = "active"
    payments_amount_received: int = 0
    payments_count_received: int = 0
    closed_at: int | None = None
    close_reason: CloseReason | None = None
    payment_ids: list[str] = field(default_factory=list)

    def close(self, reason: CloseReason, at: int) -> None:
        self.status = "closed"
        self.close_reason = reason
        self.closed_at = at

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "entity": "qr_code",
            "created_at": self.created_at,
            "name": self.name,
            "usage": self.usage,
            "type": self.type,
            "image_url": self.image_url,
            "image_content": self.image_content,
            "payment_amount": self.payment_amount,
            "status": self.status,
            "description": self.description,
            "fixed_amount": self.fixed_amount,
            "payments_amount_received": self.payments_amount_received,
            "payments_count_received": self.payments_count_received,
            "notes": dict(self.notes),
            "customer_id": self.customer_id,
            "close_by": self.close_by,
            "closed_at": self.closed_at,
            "close_reason": self.close_reason,
        }


@dataclass
class Payment:
    id: str
    key_id: str
    qr_code_id: str
    amount: int
    created_at: int
    vpa: str
    email: str
    contact: str
    customer_id: str | None
    notes: Notes
    rrn: str
    status: Literal["captured", "failed"] = "captured"
    amount_refunded: int = 0
    refund_ids: list[str] = field(default_factory=list)
    error_code: str | None = None
    error_description: str | None = None
    error_source: str | None = None
    error_step: str | None = None
    error_reason: str | None = None

    @property
    def refundable(self) -> int:
        return self.amount - self.amount_refunded if self.status == "captured" else 0

    @property
    def refund_status(self) -> str | None:
        if self.amount_refunded == 0:
            return None
        return "full" if self.amount_refunded >= self.amount else "partial"

    def to_api(self) -> dict[str, Any]:
        captured = self.status == "captured"
        return {
            "id": self.id,
            "entity": "payment",
            "amount": self.amount,
            "currency": "INR",
            # Razorpay shows a fully refunded payment as status "refunded".
            "status": "refunded" if self.refund_status == "full" else self.status,
            "order_id": None,
            "invoice_id": None,
            "international": False,
            "method": "upi",
            "amount_refunded": self.amount_refunded,
            "refund_status": self.refund_status,
            "captured": captured,
            "description": "QRv2 Payment",
            "card_id": None,
            "bank": None,
            "wallet": None,
            "vpa": self.vpa,
            "email": self.email,
            "contact": self.contact,
            "customer_id": self.customer_id,
            "notes": dict(self.notes),
            # UPI carries no merchant discount rate in India, so fee and tax are zero.
            "fee": 0 if captured else None,
            "tax": 0 if captured else None,
            "error_code": self.error_code,
            "error_description": self.error_description,
            "error_source": self.error_source,
            "error_step": self.error_step,
            "error_reason": self.error_reason,
            "acquirer_data": {"rrn": self.rrn if captured else None},
            "upi": {"payer_account_type": "bank_account", "vpa": self.vpa, "flow": "qr"},
            "created_at": self.created_at,
        }


@dataclass
class Refund:
    id: str
    key_id: str
    payment_id: str
    amount: int
    created_at: int
    notes: Notes
    receipt: str | None
    speed_requested: str
    speed_processed: str
    status: RefundStatus = "pending"
    arn: str | None = None

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "entity": "refund",
            "amount": self.amount,
            "currency": "INR",
            "payment_id": self.payment_id,
            "notes": dict(self.notes),
            "receipt": self.receipt,
            "acquirer_data": {"arn": self.arn},
            "created_at": self.created_at,
            "batch_id": None,
            "status": self.status,
            "speed_processed": self.speed_processed,
            "speed_requested": self.speed_requested,
        }


@dataclass(frozen=True)
class Event:
    """A webhook event before it is addressed and signed: its name and entity payload."""

    name: str
    payload: dict[str, dict[str, Any]]

    @property
    def contains(self) -> list[str]:
        return list(self.payload)

    def body(self, account_id: str, created_at: int) -> dict[str, Any]:
        return {
            "entity": "event",
            "account_id": account_id,
            "event": self.name,
            "contains": self.contains,
            "payload": self.payload,
            "created_at": created_at,
        }


def wrap(entity: dict[str, Any]) -> dict[str, Any]:
    """Webhook payloads nest each entity as ``{"<kind>": {"entity": {...}}}``."""
    return {"entity": entity}


def collection(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"entity": "collection", "count": len(items), "items": items}
