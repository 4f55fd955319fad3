"""Order and dispense states: owned by the gateway, mirrored by the cloud."""

from enum import StrEnum


class OrderStatus(StrEnum):
    AWAITING_PAYMENT = "awaiting_payment"
    PAID = "paid"
    DISPENSING = "dispensing"
    COMPLETED = "completed"
    PARTIALLY_COMPLETED = "partially_completed"
    FAILED = "failed"
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
    SANDBOX = "sandbox"


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
