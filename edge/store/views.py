"""Read models the store hands out: what the kiosk API shows and the sync client sends."""

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.orders import OrderStatus, PaymentMethod, RefundReason, RefundStatus
from contracts.sync import OrderItemSnapshot, OrderSnapshot


class _View(BaseModel):
    model_config = ConfigDict(frozen=True)


class MachineView(_View):
    id: str
    name: str
    location: str | None
    online: bool


class CatalogItemView(_View):
    id: str
    slot: str
    name: str
    price: int
    currency: str
    quantity: int  # units available to order now (stock minus reservations)
    category: str | None
    image_url: str | None
    # False once the gateway disabled the slot after failed dispenses in a row (or an operator
    # switched it off): the kiosk shows it unavailable and create_order refuses it.
    enabled: bool = True
    disabled_reason: str | None = None  # "jammed", "operator", ... while not enabled


class PaymentView(_View):
    """The order's electronic payment as the kiosk shows it."""

    payment_id: str
    provider: str = "sandbox"  # "sandbox" or "razorpay" (what the cloud's intent named)
    status: Literal["created", "captured", "failed"] = "created"
    qr_code_id: str | None = None  # the provider's QR code id (Razorpay ``qr_...``)
    upi_uri: str | None = None  # a UPI intent URI the kiosk can render as a QR code
    image_url: str | None = None  # the provider's hosted QR image, when there is no URI
    qr_payload: str | None = None  # what the kiosk renders (the UPI URI when there is one)


class RefundView(_View):
    """Electronic money this order asked the provider to give back."""

    refund_id: str
    amount: int
    status: RefundStatus
    reason: RefundReason


class OrderView(_View):
    id: str
    machine_id: str
    status: OrderStatus
    payment_method: PaymentMethod
    total_amount: int
    paid_amount: int
    currency: str
    payment: PaymentView | None
    customer_name: str | None
    customer_phone: str | None
    items: list[OrderItemSnapshot]
    created_at: datetime
    updated_at: datetime
    version: int
    # Electronic money asked back for units that did not come out (sum of ``refunds``).
    refund_amount: int = 0
    # Cash of this order returned to the machine credit because its units did not come out.
    credit_amount: int = 0
    # Cash received for this order beyond its total, kept as machine credit.
    overpaid_amount: int = 0
    # Cash a cancelled (or expired) order had taken, given back to the machine credit at cancel
    # (its paid_amount is zeroed then). Local to the gateway: the cloud sees the credit entry.
    cancel_credit_amount: int = 0
    refunds: list[RefundView] = Field(default_factory=list)
    # Free cash credit at the order's machine now (pays the next cash order there).
    machine_credit: int = 0

    def to_snapshot(self) -> OrderSnapshot:
        return OrderSnapshot(
            id=self.id,
            machine_id=self.machine_id,
            status=self.status,
            payment_method=self.payment_method,
            total_amount=self.total_amount,
            paid_amount=self.paid_amount,
            currency=self.currency,
            payment_id=self.payment.payment_id if self.payment else None,
            refund_amount=self.refund_amount,
            credit_amount=self.credit_amount,
            customer_name=self.customer_name,
            customer_phone=self.customer_phone,
            items=self.items,
            created_at=self.created_at,
            updated_at=self.updated_at,
            version=self.version,
        )

    def public(self) -> dict[str, object]:
        """The kiosk API's order JSON (customer details are not echoed back)."""
        return self.model_dump(mode="json", exclude={"customer_name", "customer_phone"})


@dataclass(frozen=True, slots=True)
class NewOrderLine:
    catalog_item_id: str
    quantity: int


@dataclass(frozen=True, slots=True)
class NewOrder:
    machine_id: str
    lines: tuple[NewOrderLine, ...]
    payment_method: PaymentMethod
    customer_name: str | None = None
    customer_phone: str | None = None


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """What one kiosk API client (``client``: its peer address) may hold open at once."""

    client: str
    max_open_orders: int
    max_reserved_units: int
    payment_timeout_s: float  # when its oldest open order expires: the Retry-After


@dataclass(frozen=True, slots=True)
class OrderCapability:
    """A kiosk API create: the hash of the secret token the new order gets (a replay with the
    same Idempotency-Key gets it instead of the old one), the hash of the token the request
    presented (``X-Order-Token``: it may supersede only an order of that token), and the
    client's limits."""

    token_hash: str
    presented_hash: str | None
    limits: ClientLimits


@dataclass(frozen=True, slots=True)
class PendingCommand:
    """A dispense command that is persisted (and therefore may be sent, and re-sent as is)."""

    cmd_id: str
    order_id: str
    machine_id: str
    slot: str
    payload: bytes
    sent_at: datetime
    resumed: bool  # True when it was created before (e.g. by a previous gateway run)


@dataclass(frozen=True, slots=True)
class CreditOutcome:
    duplicate: bool
    order_id: str | None  # order the credit went to (None: kept as machine credit)


@dataclass(frozen=True, slots=True)
class ResultOutcome:
    status: str  # "applied", "corrected" (late answer after a timeout), "duplicate",
    # "unknown_command"
    order_id: str | None
