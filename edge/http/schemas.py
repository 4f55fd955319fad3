"""Request bodies of the kiosk API, validated with pydantic (400 with pydantic's errors).

Every field that ends up in a sync event uses the type the sync contract (``contracts.sync``)
validates it with, so an order the cloud would refuse is refused here, before it is stored."""

import hashlib
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contracts.orders import OrderStatus, PaymentMethod
from contracts.sync import LineQuantity, OrderItemSnapshot
from contracts.text import PersonName, PhoneNumber, Ref
from edge.store.views import MachineView, NewOrder, NewOrderLine, PaymentView, RefundView

MAX_LINES = 20


class OrderLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Ref
    quantity: LineQuantity


class CreateOrderRequest(BaseModel):
    # Not stripped: the lengths the document states are the ones checked (contracts.text).
    model_config = ConfigDict(extra="forbid")

    machine_id: Ref
    items: Annotated[
        list[OrderLineIn],
        Field(
            min_length=1,
            max_length=MAX_LINES,
            description="One line per item id (an id twice is a 400); only items the machine "
            "sells (another is a 400 unknown_item)",
        ),
    ]
    payment_method: Annotated[
        PaymentMethod,
        Field(
            description="cash; upi (the tenant's provider: a dynamic UPI QR code, only where "
            "the machine's payment_methods says upi is available); sandbox (tests)"
        ),
    ]
    customer_name: PersonName | None = None
    customer_phone: PhoneNumber | None = None

    @field_validator("items")
    @classmethod
    def _distinct_items(cls, items: list[OrderLineIn]) -> list[OrderLineIn]:
        ids = [line.id for line in items]
        if len(set(ids)) != len(ids):
            # Merging could push a line past the per-item limit; asking for one line per item is
            # clearer for the kiosk.
            raise ValueError("each item id may appear only once; use quantity instead")
        return items

    def to_new_order(self) -> NewOrder:
        return NewOrder(
            machine_id=self.machine_id,
            lines=tuple(NewOrderLine(line.id, line.quantity) for line in self.items),
            payment_method=self.payment_method,
            customer_name=self.customer_name,
            customer_phone=self.customer_phone,
        )

    def fingerprint(self) -> str:
        """Hash of the validated request: what an Idempotency-Key replay must match."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9_.:-]{8,128}$"


class PublicOrder(BaseModel):
    """An order as the kiosk API shows it: customer details are never echoed back."""

    model_config = ConfigDict(extra="forbid", from_attributes=True)

    id: str
    machine_id: str
    status: OrderStatus
    payment_method: PaymentMethod
    total_amount: int
    paid_amount: int
    currency: str
    payment: Annotated[
        PaymentView | None,
        Field(
            description="The electronic payment (upi, sandbox): render upi_uri (or qr_payload) "
            "as a QR code, else show image_url"
        ),
    ]
    items: list[OrderItemSnapshot]
    created_at: datetime
    updated_at: datetime
    version: int
    refund_amount: Annotated[
        int,
        Field(
            description="Electronic money asked back from the provider for units that did not "
            "come out (the sum of refunds)"
        ),
    ] = 0
    credit_amount: Annotated[
        int,
        Field(
            description="Cash of this order kept as machine credit because units did not come out"
        ),
    ] = 0
    overpaid_amount: Annotated[
        int, Field(description="Cash received beyond the total, kept as machine credit")
    ] = 0
    cancel_credit_amount: Annotated[
        int,
        Field(
            description="Cash this order had taken when it was cancelled or expired, kept as "
            "machine credit (there is no coin return; paid_amount is zero after a cancel)"
        ),
    ] = 0
    refunds: Annotated[
        list[RefundView],
        Field(description="Refunds of this order and where each stands at the provider"),
    ] = Field(default_factory=list)
    machine_credit: Annotated[
        int,
        Field(description="Free cash credit at this machine now: pays the next cash order here"),
    ] = 0


class CreatedOrder(PublicOrder):
    """The answer to a create: the order and its secret token, shown only here."""

    order_token: Annotated[
        str,
        Field(
            description="Secret capability of this order (256 random bits; the gateway keeps "
            "only its hash): send it as X-Order-Token to cancel the order or to replace it with "
            "a new cash order on the same machine. An Idempotency-Key replay answers a fresh "
            "token, which replaces the earlier one.",
            pattern=r"^[A-Za-z0-9_-]{43}$",
        ),
    ]


class BreakerSnapshot(BaseModel):
    """One circuit breaker (``contracts.breaker.CircuitBreaker.snapshot``)."""

    name: str
    state: Literal["closed", "open", "half_open"]
    consecutive_failures: int
    retry_in_s: float
    opened_total: int
    failure_threshold: int
    recovery_s: float


class HealthReport(BaseModel):
    """``/health``: ``status`` is ``ok`` or ``degraded``; the parts' details follow."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ok", "degraded"]
    breakers: Annotated[
        dict[str, BreakerSnapshot],
        Field(
            description="Circuit breakers by name (gateway_payments: UPI payment requests to "
            "the cloud); degraded while one is not closed"
        ),
    ] = Field(default_factory=dict)


class PaymentMethodOption(BaseModel):
    """Whether the kiosk may offer a payment method at a machine now."""

    model_config = ConfigDict(extra="forbid", from_attributes=True)

    method: PaymentMethod
    available: bool
    reason: Annotated[
        Literal["offline", "payment_service_unavailable", "not_enabled"] | None,
        Field(
            description="Why not: offline (no cloud link), payment_service_unavailable (the "
            "payments circuit breaker is open: the cloud or its provider keeps failing), "
            "not_enabled (the tenant has no UPI provider)"
        ),
    ] = None
    message: Annotated[str | None, Field(description="What to tell the customer")] = None
    retry_in_s: Annotated[
        float | None, Field(description="When the breaker lets one probe through again")
    ] = None


class PublicMachine(MachineView):
    """A machine as the kiosk API lists it, with the payment methods that work there now."""

    payment_methods: list[PaymentMethodOption]
    machine_credit: Annotated[
        int,
        Field(
            description="Free cash credit on the machine (cancelled orders' coins, overpayment, "
            "undispensed cash units), in minor units: it pays the next cash order there"
        ),
    ] = 0
    currency: str = "INR"


class MachinePaymentMethods(BaseModel):
    model_config = ConfigDict(extra="forbid")

    machine_id: str
    payment_methods: list[PaymentMethodOption]
