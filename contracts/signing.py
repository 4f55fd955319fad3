"""Message signing between gateway and device: HMAC-SHA256 over the exact body bytes.

Each machine has one secret, its ``command_key`` (hex, in the device's config.json and in the
gateway's database). Neither direction signs with it directly: each uses its own key derived
from it, so a signature made for one direction is never valid in the other::

    k_down = HMAC-SHA256(secret, b"vend/v1/gateway-to-device")   # dispense commands, acks
    k_up   = HMAC-SHA256(secret, b"vend/v1/device-to-gateway")   # cash, dispense results, stock

Both directions use the same envelope::

    {"v": 1, "body": "<compact JSON text>", "sig": "<64 hex chars>"}

The signature covers ``body.encode("utf-8")`` exactly as sent, so nobody re-serialises before
checking.

Commands (``commands/dispense``): the device accepts one only if the signature matches, ``mid``
is its own id, ``exp`` has not passed (when its clock is set), and ``ctr`` is greater than the
last counter it accepted (persisted on flash). A ``cmd_id`` it has already journalled is never
run again: the device re-sends the recorded result instead.

Acks (``acks``): the body is ``contracts.device_messages.Acks`` (``mid``, ``ids``, ``ts``),
signed with ``k_down`` like a command. The device drops a journalled money event only on an ack
whose signature matches and whose ``mid`` is its own; an unsigned or forged one is refused and
the events stay to be resent. There is no counter: an ack only names ids the gateway persisted,
and acking one again is harmless, so a replayed genuine ack does no harm.

Device messages that move money or stock (``events/cash``, ``events/dispense``,
``status/inventory``): the body carries the message's own fields plus ``mid`` (the machine id)
and ``seq``, a per-device counter kept in the flash journal. The gateway checks signature, that
``mid`` is the machine of the topic, and that ``seq`` is fresh (``edge/store/sequences.py``).
"""

import hashlib
import hmac
import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from contracts import topics
from contracts.device_messages import Acks, EventId, SlotCode

SIGNATURE_VERSION = 1
MAX_SEQ = 2**63 - 1

DOWN_LABEL = b"vend/v1/gateway-to-device"
UP_LABEL = b"vend/v1/device-to-gateway"


def down_key(secret: bytes) -> bytes:
    """The key that signs gateway -> device commands."""
    return hmac.new(secret, DOWN_LABEL, hashlib.sha256).digest()


def up_key(secret: bytes) -> bytes:
    """The key that signs device -> gateway messages."""
    return hmac.new(secret, UP_LABEL, hashlib.sha256).digest()


def key_id(key: bytes) -> str:
    """A short public name of a key, so a stored sequence is tied to the key it counted for."""
    return hashlib.sha256(b"vend/v1/key-id" + key).hexdigest()[:16]


class DispenseCommandBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cmd_id: EventId
    mid: str
    order_id: str
    item_id: str
    slot: SlotCode
    ctr: Annotated[StrictInt, Field(gt=0)]
    exp: StrictInt  # unix seconds after which the device must refuse it
    ts: StrictInt  # gateway time at signing, lets a device with no clock estimate one


class SignedEnvelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: StrictInt = SIGNATURE_VERSION
    body: str
    sig: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


# The command envelope kept its name for the callers that know it.
SignedCommand = SignedEnvelope


class SignedHeader(BaseModel):
    """What every signed device body carries besides the message's own fields."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    mid: Annotated[str, Field(min_length=1, max_length=64)]
    # Bounded by what SQLite's INTEGER holds: a larger seq is a malformed body, not a store error.
    seq: Annotated[StrictInt, Field(gt=0, le=MAX_SEQ)]


class SignatureError(ValueError):
    """A signed message's envelope, signature or body does not verify."""


class MalformedEnvelope(SignatureError):
    """Not a signed envelope at all (unsigned JSON, wrong version, junk)."""


class BadSignature(SignatureError):
    """The signature does not match the body under this key."""


class MalformedBody(SignatureError):
    """The signature matches but the body is not what the message type requires."""


def sign_body(key: bytes, body: str) -> str:
    return hmac.new(key, body.encode("utf-8"), hashlib.sha256).hexdigest()


def _envelope(key: bytes, text: str) -> bytes:
    envelope = {"v": SIGNATURE_VERSION, "body": text, "sig": sign_body(key, text)}
    return json.dumps(envelope, separators=(",", ":")).encode("utf-8")


def open_envelope(key: bytes, payload: bytes) -> SignedEnvelope:
    """The envelope of ``payload`` if its signature verifies under ``key`` (constant time)."""
    try:
        envelope = SignedEnvelope.model_validate_json(payload)
    except ValueError as exc:
        raise MalformedEnvelope("malformed envelope") from exc
    if envelope.v != SIGNATURE_VERSION:
        raise MalformedEnvelope("unknown envelope version")
    if not hmac.compare_digest(sign_body(key, envelope.body), envelope.sig):
        raise BadSignature("bad signature")
    return envelope


def sign_command(key: bytes, body: DispenseCommandBody) -> bytes:
    """The exact MQTT payload bytes for ``body``, signed with ``key`` (a ``down_key``)."""
    return _envelope(key, json.dumps(body.model_dump(), separators=(",", ":"), sort_keys=True))


def verify_command(key: bytes, payload: bytes) -> DispenseCommandBody:
    """Host-side mirror of the firmware's check (signature only; counter and expiry are the
    device's). ``key`` is a ``down_key``. Used by tests and tools."""
    envelope = open_envelope(key, payload)
    try:
        return DispenseCommandBody.model_validate_json(envelope.body)
    except ValueError as exc:
        raise MalformedBody("malformed command body") from exc


def sign_device_message(key: bytes, machine_id: str, seq: int, fields: dict[str, Any]) -> bytes:
    """What a device publishes for ``fields`` (e.g. ``CashCredit(...).model_dump()``), signed
    with ``key`` (an ``up_key``); the host-side twin of the firmware's reports.Signer."""
    body = dict(fields) | {"mid": machine_id, "seq": seq}
    return _envelope(key, json.dumps(body, separators=(",", ":")))


def verify_device_message(key: bytes, payload: bytes) -> tuple[SignedHeader, str]:
    """-> (mid and seq, the exact body text) of a device message signed with ``key`` (an
    ``up_key``). Whether ``mid`` is the topic's machine and ``seq`` is fresh is the caller's
    business."""
    envelope = open_envelope(key, payload)
    try:
        header = SignedHeader.model_validate_json(envelope.body)
    except ValueError as exc:
        raise MalformedBody("signed body without mid and seq") from exc
    return header, envelope.body


# Device topics whose messages must arrive signed: everything that moves money or stock.
SIGNED_DEVICE_SUFFIXES = (topics.CASH_CREDIT, topics.DISPENSE_RESULT, topics.INVENTORY)


def sign_acks(key: bytes, machine_id: str, ids: list[str], ts: int) -> bytes:
    """The exact ``acks`` payload naming ``ids`` of ``machine_id`` as persisted, signed with
    ``key`` (a ``down_key``: the device already holds it to check commands)."""
    body = Acks(mid=machine_id, ids=ids, ts=ts)
    return _envelope(key, json.dumps(body.model_dump(), separators=(",", ":")))


def verify_acks(key: bytes, payload: bytes) -> Acks:
    """Host-side mirror of the firmware's check of an ack (``key`` is a ``down_key``); whether
    ``mid`` is the receiving machine is the caller's business. Used by tests and tools."""
    envelope = open_envelope(key, payload)
    try:
        return Acks.model_validate_json(envelope.body)
    except ValueError as exc:
        raise MalformedBody("malformed acks body") from exc


def read_acks(payload: bytes) -> Acks:
    """The body of an ack WITHOUT checking its signature: for observers (tests watching what
    the gateway acked), never for deciding anything."""
    try:
        return Acks.model_validate_json(SignedEnvelope.model_validate_json(payload).body)
    except ValueError as exc:
        raise MalformedEnvelope("not a signed ack") from exc
