"""Payloads a device publishes (and the gateway's replies), as the gateway validates them.

Times are device-clock unix seconds (``ts``). Event ids are made on the device (32 hex chars from
``os.urandom``) and stay stable across retries, so the gateway deduplicates by them.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt

from contracts.money import Currency, PositiveAmount
from contracts.orders import DispenseOutcome

MAX_PAYLOAD_BYTES = 4096

MAX_REASON = 64


def _clip(value: object) -> object:
    # A result must never be refused for a long reason (the money event would be lost); it is
    # cut to a size every store takes instead.
    return value[:MAX_REASON] if isinstance(value, str) else value


Reason = Annotated[str, BeforeValidator(_clip), Field(max_length=MAX_REASON)]
EventId = Annotated[str, Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
SlotCode = Annotated[str, Field(min_length=1, max_length=8, pattern=r"^[A-Z0-9]+$")]


class _Msg(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Presence(_Msg):
    """Retained on ``status/presence``. The broker publishes ``{"online": false}`` as last will."""

    online: StrictBool
    fw: str | None = None
    boot: StrictInt | None = None  # boot counter, grows at every power-up
    ts: StrictInt | None = None


class Health(_Msg):
    fw: str
    uptime_s: Annotated[StrictInt, Field(ge=0)]
    heap_free: Annotated[StrictInt, Field(ge=0)]
    temp_c: float | None = None
    door_open: StrictBool = False
    rssi: StrictInt | None = None
    dropped: Annotated[StrictInt, Field(ge=0)] = 0  # telemetry messages dropped from the queue
    acks_refused: Annotated[StrictInt, Field(ge=0)] = 0  # acks whose signature did not verify
    ts: StrictInt


class Inventory(_Msg):
    """Units the device believes are in each slot (from its own vend counters / sensors)."""

    slots: dict[SlotCode, Annotated[StrictInt, Field(ge=0, le=1000)]]
    ts: StrictInt


class DispenseResult(_Msg):
    """Outcome of one dispense command; ``id`` equals the command's ``cmd_id``."""

    id: EventId
    cmd_id: EventId
    order_id: str
    item_id: str
    slot: SlotCode
    result: DispenseOutcome
    reason: Reason | None = None
    ts: StrictInt


class CashCredit(_Msg):
    """Money put into the coin or bill acceptor; sent once per credit, retried until acked."""

    id: EventId
    amount: PositiveAmount
    currency: Currency = "INR"
    ts: StrictInt


class DeviceLog(_Msg):
    level: Literal["debug", "info", "warning", "error"] = "info"
    msg: Annotated[str, Field(max_length=1024)]
    ts: StrictInt | None = None


MAX_ACK_IDS = 32  # keeps a signed ack of 64-char ids well inside the device's packet limit


class Acks(BaseModel):
    """Gateway -> device on ``acks``, the body of a signed envelope (``contracts.signing``):
    these event ids of machine ``mid`` are persisted and need no resending. ``ts`` is the
    gateway's clock at signing, for the record only: acking an id again is harmless, so a
    replayed genuine ack needs no freshness check."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mid: Annotated[str, Field(min_length=1, max_length=64)]
    ids: Annotated[list[EventId], Field(min_length=1, max_length=MAX_ACK_IDS)]
    ts: StrictInt
