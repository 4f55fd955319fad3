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
from contracts.orders import ItemDispenseStatus, OrderStatus, PaymentMethod
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
    method: Literal["sandbox"]
    idempotency_key: Annotated[str, Field(min_length=8, max_length=128)]


class PaymentIntent(_Model):
    payment_id: str
    order_id: str
    provider: str
    status: Literal["created", "captured", "failed"]
    amount: PositiveAmount
    currency: Currency
    qr_payload: str | None = None  # what the kiosk renders as a QR code (UPI intent for Razorpay)
    expires_at: datetime | None = None


# --- push channel (WebSocket) -----------------------------------------------------------------


class PaymentUpdate(_Model):
    payment_id: str
    order_id: str
    machine_id: str
    status: Literal["captured", "failed"]
    amount: PositiveAmount
    currency: Currency
    provider: str


class ChannelMessage(_Model):
    id: str  # stable; the gateway dedupes and acks by it
    type: Literal["payment.update", "state.changed"]
    payload: dict[str, Any]  # PaymentUpdate for payment.update; {} for state.changed (pull now)


class ChannelAck(_Model):
    type: Literal["ack"] = "ack"
    id: str
