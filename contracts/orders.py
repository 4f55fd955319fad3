"""Order and dispense states: owned by the gateway, mirrored by the cloud."""

from enum import StrEnum


class OrderStatus(StrEnum):
    AWAITING_PAYMENT = "awaiting_payment"
    PAID = "paid"
    DISPENSING = "dispensing"
    COMPLETED = "completed"
    PARTIALLY_COMPLETED = "partially_completed"
    FAILED = "failed"
    # Written by gateways from before refunds existed; a new order never enters it: paid units
    # that were not dispensed end as ``partially_completed`` or ``failed`` with a refund (or, for
    # cash, machine credit) recorded in the same transaction.
    REFUND_PENDING = "refund_pending"
    CANCELLED = "cancelled"


TERMINAL_ORDER_STATUSES = frozenset(
    {
        OrderStatus.COMPLETED,
        OrderStatus.PARTIALLY_COMPLETED,
        OrderStatus.FAILED,
        OrderStatus.REFUND_PENDING,
        OrderStatus.CANCELLED,
    }
)


class PaymentMethod(StrEnum):
    CASH = "cash"
    SANDBOX = "sandbox"  # the cloud's self-capturing test provider (tests only)
    UPI = "upi"  # UPI through the tenant's provider (Razorpay dynamic QR)


ELECTRONIC_METHODS = frozenset({PaymentMethod.SANDBOX, PaymentMethod.UPI})


class RefundStatus(StrEnum):
    """A refund of electronic money.

    ``pending`` (to send, or sent and not yet processed) ``-> refunded`` (the provider says it
    is processed). A provider error makes it ``failed`` while retries with backoff remain; when
    they run out, or the provider refuses it outright, it goes to ``manual_review`` and the
    worker stops. Held refunds (outcome unknown under the ``review`` policy) start there. From
    ``manual_review`` an operator retries (back to ``pending``) or resolves it by hand with a
    note: ``refunded`` (paid back outside the provider) or ``voided`` (nothing was owed, e.g.
    the item did come out)."""

    PENDING = "pending"
    REFUNDED = "refunded"
    FAILED = "failed"
    MANUAL_REVIEW = "manual_review"
    VOIDED = "voided"


class RefundReason(StrEnum):
    UNDISPENSED = "undispensed"  # paid units that failed (or whose outcome is unknown)
    UNSERVED = "unserved"  # paid after the order was cancelled or expired: all of it
    DUPLICATE = "duplicate"  # a second payment for the same order or QR code
    UNMATCHED = "unmatched"  # a captured payment that matches no order


class CreditReason(StrEnum):
    """Why the free machine credit (cash with no order) changed."""

    CASH_IN = "cash_in"  # coins or notes accepted (+)
    ORDER_PAYMENT = "order_payment"  # an order took some (-)
    ORDER_CANCELLED = "order_cancelled"  # a cancelled order gave its cash back (+)
    UNDISPENSED = "undispensed"  # paid cash units that did not come out (+)


class ItemDispenseStatus(StrEnum):
    """Per order item: one unit is one dispense command; the item's status summarises its units."""

    PENDING = "pending"
    DISPENSING = "dispensing"
    DISPENSED = "dispensed"  # every unit came out
    PARTIAL = "partial"  # some units out, some failed or unknown
    FAILED = "failed"  # no unit out, at least one failed and none unknown
    UNKNOWN = "unknown"  # outcome of at least one unit unknown (power cut mid-vend), none out
    NOT_DISPENSED = "not_dispensed"  # order cancelled before any dispense


class DispenseOutcome(StrEnum):
    """What a device reports for one dispense command."""

    OK = "ok"
    FAILED = "failed"
    UNKNOWN = "unknown"
