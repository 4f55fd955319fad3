"""Dispense-command signing: HMAC-SHA256 with the device's command key over the exact body bytes.

Wire form on ``devices/{id}/commands/dispense``::

    {"v": 1, "body": "<compact JSON text of DispenseCommandBody>", "sig": "<64 hex chars>"}

The signature covers ``body.encode("utf-8")`` exactly as sent, so nobody re-serialises before
checking. The device accepts a command only if the signature matches, ``mid`` is its own id,
``exp`` has not passed (when its clock is set), and ``ctr`` is greater than the last counter it
accepted (persisted on flash). A ``cmd_id`` it has already journalled is never run again: the
device re-sends the recorded result instead.
"""

import hashlib
import hmac
import json
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from contracts.device_messages import EventId, SlotCode

SIGNATURE_VERSION = 1


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


class SignedCommand(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: StrictInt = SIGNATURE_VERSION
    body: str
    sig: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class SignatureError(ValueError):
    """The command's signature or body does not verify."""


def sign_body(key: bytes, body: str) -> str:
    return hmac.new(key, body.encode("utf-8"), hashlib.sha256).hexdigest()


def sign_command(key: bytes, body: DispenseCommandBody) -> bytes:
    """The exact MQTT payload bytes for ``body``, signed with ``key``."""
    text = json.dumps(body.model_dump(), separators=(",", ":"), sort_keys=True)
    envelope = {"v": SIGNATURE_VERSION, "body": text, "sig": sign_body(key, text)}
    return json.dumps(envelope, separators=(",", ":")).encode("utf-8")


def verify_command(key: bytes, payload: bytes) -> DispenseCommandBody:
    """Host-side mirror of the firmware's check (signature only; counter and expiry are the
    device's). Used by tests and tools."""
    try:
        envelope = SignedCommand.model_validate_json(payload)
    except ValueError as exc:
        raise SignatureError("malformed command envelope") from exc
    if not hmac.compare_digest(sign_body(key, envelope.body), envelope.sig):
        raise SignatureError("bad signature")
    try:
        return DispenseCommandBody.model_validate_json(envelope.body)
    except ValueError as exc:
        raise SignatureError("malformed command body") from exc
