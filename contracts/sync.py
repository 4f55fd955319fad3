"""Gateway <-> cloud sync contract (all over mutual TLS except enrolment).

Paths (cloud):
- ``POST /api/v1/gateways/enroll`` (public listener; the one-time token is the credential):
  ``EnrollRequest`` -> ``EnrollResponse``.
- ``POST /sync/v1/events`` (mTLS listener): ``PushBatch`` -> ``PushAck``. Events are stored
  deduplicated by ``event_id``; ``ack_seq`` is the gateway's high-water mark: every event with
  ``seq <= ack_seq`` is durably stored or listed in ``rejected`` (kept in the cloud's dead
  letters), so the gateway may forget them. Replaying a batch is safe.
- ``GET /sync/v1/state?cursor=N`` (mTLS): ``StateResponse`` with every machine of the gateway's
  site whose version is greater than ``N``; the gateway stores the returned ``cursor``.
- ``POST /sync/v1/payments`` (mTLS): ``PaymentCreate`` -> ``PaymentIntent``; idempotent on
  ``idempotency_key``.
- ``GET /sync/v1/channel`` (mTLS WebSocket, opened by the gateway): the cloud sends
  ``ChannelMessage`` JSON frames; the gateway answers ``ChannelAck`` after it has persisted the
  effect. Unacknowledged messages are sent again on the next connection, so handlers dedupe by id.

The gateway is identified by its client certificate (CN = gateway id), never by a body field.
"""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictInt,
    model_serializer,
)

from contracts.money import Amount, Currency, PositiveAmount
from contracts.numbers import WHOLE_NUMBER
from contracts.orders import (
    CreditReason,
    ItemDispenseStatus,
    OrderStatus,
    PaymentMethod,
    RefundReason,
    RefundStatus,
)
from contracts.text import (
    NOT_BLANK,
    PRINTABLE,
    DeviceReason,
    PersonName,
    PhoneNumber,
    Ref,
    StateName,
)

SYNC_PREFIX = "/sync/v1"
MAX_BATCH = 500


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- enrolment ---------------------------------------------------------------------------------


class EnrollRequest(_Model):
    token: Annotated[str, Field(min_length=16, max_length=256)]
    csr_pem: Annotated[str, Field(min_length=100, max_length=20_000)]
    name: Annotated[str, Field(max_length=200)] | None = None


class EnrollResponse(_Model):
    gateway_id: str
    site_id: str
    tenant_id: str
    certificate_pem: str  # the gateway's client certificate, signed by the cloud CA
    ca_pem: str  # trust anchor for the cloud's mTLS listener
    sync_url: str  # e.g. https://cloud.example:8443


# --- push: outbox events ----------------------------------------------------------------------

EventType = Literal[
    "order.snapshot",  # payload: OrderSnapshot (full state; cloud keeps the highest version)
    "dispense.result",  # payload: DispenseRecord
    "cash.credit",  # payload: CashCreditRecord
    "inventory.changed",  # payload: InventoryChange
    "refund.request",  # payload: RefundRequest (the gateway decided money goes back)
    "credit.entry",  # payload: CreditEntry (free machine credit moved)
    "slot.state",  # payload: SlotStateRecord (a slot was disabled or enabled at the gateway)
]


class OutboxEvent(_Model):
    # per-gateway, strictly increasing, no reuse
    seq: Annotated[StrictInt, Field(gt=0, le=2**53), WHOLE_NUMBER]
    # stable id made where it happened
    event_id: Annotated[str, Field(min_length=8, max_length=64), PRINTABLE]
    type: EventType
    occurred_at: datetime
    payload: dict[str, Any]


class PushBatch(_Model):
    events: Annotated[list[OutboxEvent], Field(min_length=1, max_length=MAX_BATCH)]


class RejectedEvent(_Model):
    """One event of a batch the cloud could not accept. It is kept in the cloud's dead letters
    and not stored as synced; the batch goes on and ``ack_seq`` still passes it."""

    event_id: str
    seq: StrictInt
    code: str  # e.g. validation_error (contract), not_storable / apply_failed (cannot apply)
    message: str


class PushAck(_Model):
    ack_seq: StrictInt  # high-water mark: all events with seq <= ack_seq are stored or rejected
    accepted: StrictInt  # new events stored by this request
    duplicates: StrictInt  # events already stored before (replays)
    rejected: list[RejectedEvent] = Field(default_factory=list)  # dead-lettered by the cloud

    @model_serializer(mode="wrap")
    def _omit_empty_rejected(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if not self.rejected:
            # Gateways from before dead letters refuse unknown fields: an ack with nothing
            # rejected keeps the shape they know, so upgrading the cloud first stalls none.
            data.pop("rejected", None)
        return data


# Units of one item in one order; the kiosk API refuses more, so the cloud never sees more.
LineQuantity = Annotated[StrictInt, Field(ge=1, le=10), WHOLE_NUMBER]
# The text rules of contracts.text apply to every string a gateway sends: the kiosk API and the
# cloud's own inputs (catalog names, ids) refuse what would be refused here.
ItemName = Annotated[str, Field(min_length=1, max_length=200), NOT_BLANK]


class OrderItemSnapshot(_Model):
    id: Ref  # order item id (gateway-made)
    catalog_item_id: Ref
    slot: Ref
    name: ItemName
    unit_price: Amount
    quantity: LineQuantity
    dispensed: Annotated[StrictInt, Field(ge=0, le=1000), WHOLE_NUMBER] = 0
    failed: Annotated[StrictInt, Field(ge=0, le=1000), WHOLE_NUMBER] = 0
    unknown: Annotated[StrictInt, Field(ge=0, le=1000), WHOLE_NUMBER] = 0
    dispense_status: ItemDispenseStatus


class OrderSnapshot(_Model):
    id: Ref  # order id (gateway-made UUID)
    machine_id: Ref
    status: OrderStatus
    payment_method: PaymentMethod
    total_amount: Amount
    paid_amount: Amount = 0
    currency: Currency
    payment_id: Ref | None = None  # cloud payment id (sandbox/razorpay), None for cash
    # Electronic money this order asked the provider to give back (RefundRequest amounts).
    refund_amount: Amount = 0
    # Cash this order returned to the machine credit because its units did not come out.
    credit_amount: Amount = 0
    customer_name: PersonName | None = None
    customer_phone: PhoneNumber | None = None
    items: list[OrderItemSnapshot]
    created_at: datetime
    updated_at: datetime
    # grows with every change of the order
    version: Annotated[StrictInt, Field(ge=1, le=2**53), WHOLE_NUMBER]


class DispenseRecord(_Model):
    cmd_id: Ref
    machine_id: Ref
    order_id: Ref
    item_id: Ref
    slot: Ref
    result: Literal["ok", "failed", "unknown"]
    reason: DeviceReason | None = None  # cleaned, never refused: the result must arrive
    device_ts: Annotated[StrictInt, Field(ge=-(2**53), le=2**53), WHOLE_NUMBER] | None = None


class CashCreditRecord(_Model):
    credit_id: Ref  # the device's event id
    machine_id: Ref
    amount: PositiveAmount
    currency: Currency
    order_id: Ref | None = None  # the order it paid for, if any


class InventoryChange(_Model):
    machine_id: Ref
    catalog_item_id: Ref
    slot: Ref
    # level after the change, as the gateway sees it
    quantity: Annotated[StrictInt, Field(ge=0, le=1_000_000), WHOLE_NUMBER]
    delta: Annotated[StrictInt, Field(ge=-1_000_000, le=1_000_000), WHOLE_NUMBER]
    reason: Literal["sale", "reservation", "release", "restock", "device_report"]


RefundId = Annotated[str, Field(pattern=r"^rf-[A-Za-z0-9_-]{8,80}$")]


class RefundRequest(_Model):
    """Money the gateway decided goes back to a customer's UPI account. ``refund_id`` is
    deterministic (``rf-<order_id>-undispensed``, ``rf-<payment_id>-unserved``), so the cloud
    and the gateway reaching the same decision make one refund, never two; it is also the
    provider's idempotency key."""

    refund_id: RefundId
    order_id: Ref
    machine_id: Ref
    payment_id: Ref  # the cloud payment id the money came in on
    amount: PositiveAmount
    currency: Currency
    reason: RefundReason
    # Units whose outcome is unknown under the tenant's ``review`` policy: recorded, not sent to
    # the provider until an operator retries it (status manual_review).
    hold: bool = False


class CreditEntry(_Model):
    """One move of a machine's free credit (cash no order holds). ``balance`` is the free credit
    after the move as the gateway counts it; the cloud sums ``delta`` per machine."""

    entry_id: Ref
    machine_id: Ref
    currency: Currency
    delta: Annotated[StrictInt, Field(ge=-(10_000_000_00), le=10_000_000_00), WHOLE_NUMBER]
    balance: Amount
    reason: CreditReason
    order_id: Ref | None = None
    credit_id: Ref | None = None  # the cash credit (device event) behind a cash_in


class SlotStateRecord(_Model):
    """A slot switched off (repeated failed dispenses) or on again, as the gateway applied it."""

    machine_id: Ref
    catalog_item_id: Ref
    slot: Ref
    enabled: bool
    reason: Literal["jammed", "operator", "technician"]
    consecutive_failures: Annotated[StrictInt, Field(ge=0, le=1_000_000), WHOLE_NUMBER] = 0
    # the catalog ``enable_rev`` this state answers (0 when the gateway decided by itself)
    enable_rev: Annotated[StrictInt, Field(ge=0, le=2**31 - 1), WHOLE_NUMBER] = 0


# --- pull: versioned state --------------------------------------------------------------------


class CatalogItemState(_Model):
    id: str
    slot: str
    name: StateName
    category: str | None = None
    price: Amount
    currency: Currency
    quantity: Annotated[StrictInt, Field(ge=0, le=1_000_000), WHOLE_NUMBER]
    # Bumped only when an operator sets the stock level in the cloud (restock). The gateway
    # adopts ``quantity`` only when ``stock_rev`` changes; otherwise its own count (which already
    # includes sales not yet synced) stays.
    stock_rev: Annotated[StrictInt, Field(ge=0, le=2**31 - 1), WHOLE_NUMBER] = 0
    capacity: Annotated[StrictInt, Field(ge=0, le=1_000_000), WHOLE_NUMBER] | None = None
    image_url: str | None = None
    active: bool = True
    # An operator's switch for the slot, adopted by the gateway only when ``enable_rev`` changes
    # (like ``stock_rev``): a slot the gateway disabled after jams stays off until then.
    enabled: bool = True
    enable_rev: Annotated[StrictInt, Field(ge=0, le=2**31 - 1), WHOLE_NUMBER] = 0


class MoneyPolicy(_Model):
    """The tenant's rules for money the gateway must decide about on its own."""

    # Paid units whose outcome is unknown (power cut mid-vend): refund them at once, or hold
    # the refund for an operator's review.
    unknown_outcome: Literal["refund", "review"] = "refund"
    # Failed dispenses in a row after which the gateway stops selling the slot.
    disable_slot_after_failures: Annotated[StrictInt, Field(ge=1, le=100), WHOLE_NUMBER] = 3
    # Whether the tenant has an electronic provider (UPI) configured at all.
    upi_enabled: bool = False
    # Whether the cloud runs the self-capturing sandbox provider (tests and trials only: it gives
    # away whatever is ordered). The cloud refuses sandbox payments when it is off; the gateway
    # uses this to stop offering them. Clouds from before this field accept sandbox payments, so
    # its absence means on.
    sandbox_enabled: bool = True


class MachineState(_Model):
    id: str
    tenant_id: str
    site_id: str
    name: str
    location: str | None = None
    status: Literal["active", "decommissioned"]
    mqtt_secret_hash: str  # contracts.credentials format
    command_key: str  # hex of the HMAC key for dispense commands
    currency: Currency = "INR"
    config: dict[str, Any] = Field(default_factory=dict)
    money_policy: MoneyPolicy = Field(default_factory=MoneyPolicy)
    catalog: list[CatalogItemState]
    version: Annotated[StrictInt, Field(ge=0, le=2**53), WHOLE_NUMBER]


class StateResponse(_Model):
    cursor: Annotated[StrictInt, Field(ge=0, le=2**53), WHOLE_NUMBER]
    machines: list[MachineState]


# --- payments ---------------------------------------------------------------------------------


class PaymentCreate(_Model):
    order_id: str
    machine_id: str
    amount: PositiveAmount
    currency: Currency
    method: Literal["sandbox", "upi"]
    idempotency_key: Annotated[str, Field(min_length=8, max_length=128)]
    # How long the gateway keeps the order open for payment (its order_payment_timeout_s): the
    # provider's QR code closes then too, so nobody pays for an order the gateway has expired.
    # Absent (older gateways): the cloud's payment_expiry_s.
    pay_within_s: Annotated[StrictInt, Field(ge=1, le=86_400), WHOLE_NUMBER] | None = None


class PaymentIntent(_Model):
    payment_id: str
    order_id: str
    provider: str
    status: Literal["created", "captured", "failed"]
    amount: PositiveAmount
    currency: Currency
    qr_payload: str | None = None  # what the kiosk renders as a QR code (a UPI intent URI)
    expires_at: datetime | None = None
    provider_ref: str | None = None  # the provider's id for it (Razorpay: the qr_code id)
    image_url: str | None = None  # the provider's hosted QR image, when it gives no UPI URI


# --- push channel (WebSocket) -----------------------------------------------------------------


class PaymentUpdate(_Model):
    payment_id: str
    order_id: str
    machine_id: str
    status: Literal["captured", "failed"]
    amount: PositiveAmount
    currency: Currency
    provider: str
    provider_payment_id: str | None = None  # Razorpay's pay_... id, when there is one


class RefundUpdate(_Model):
    """Where a refund stands at the provider, for the gateway (kiosk messages) to show."""

    refund_id: RefundId
    order_id: Ref
    payment_id: Ref
    amount: PositiveAmount
    currency: Currency
    status: RefundStatus
    provider_refund_id: str | None = None


class ChannelMessage(_Model):
    id: str  # stable; the gateway dedupes and acks by it
    type: Literal["payment.update", "refund.update", "state.changed"]
    # PaymentUpdate for payment.update; RefundUpdate for refund.update; {} for state.changed
    payload: dict[str, Any]


class ChannelAck(_Model):
    type: Literal["ack"] = "ack"
    id: str
