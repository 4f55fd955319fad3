"""A signed device message (cash credit, dispense result, inventory count), checked and applied
in one writer transaction: key of the machine, signature over the exact body bytes, the body's
``mid`` against the topic's machine, freshness of ``seq`` (``edge.store.sequences``), and only
then the ledger. A refused message changes nothing. An accepted money event comes back with
its ack already signed with the machine's ``k_down`` (the key never leaves the store).
"""

import hashlib
import time
from dataclasses import dataclass, replace
from typing import Literal, cast

import sqlite_utils
from pydantic import ValidationError

from contracts import topics
from contracts.device_messages import CashCredit, DispenseResult, Inventory
from contracts.signing import (
    BadSignature,
    MalformedBody,
    MalformedEnvelope,
    down_key,
    key_id,
    sign_acks,
    up_key,
    verify_device_message,
)
from edge.store import ledger, sealed, sequences

Db = sqlite_utils.Database

Status = Literal["applied", "corrected", "duplicate", "unknown_command", "refused"]

# Why a message was refused: the label of gateway_device_messages_refused_total.
UNKNOWN_MACHINE = "unknown_machine"
UNSIGNED = "unsigned"
BAD_SIGNATURE = "bad_signature"
MALFORMED = "malformed"
WRONG_MACHINE = "wrong_machine"
REPLAY = "replay"
# A cash credit under an id that names another machine's credit or another event.
FOREIGN_ID = "foreign_id"

_MODELS: dict[str, type[CashCredit | DispenseResult | Inventory]] = {
    topics.CASH_CREDIT: CashCredit,
    topics.DISPENSE_RESULT: DispenseResult,
    topics.INVENTORY: Inventory,
}


@dataclass(frozen=True)
class DeviceOutcome:
    status: Status
    reason: str | None = None  # set when refused
    ack_id: str | None = None  # the money event to acknowledge to the device
    message: CashCredit | DispenseResult | Inventory | None = None
    order_id: str | None = None
    mark: tuple[tuple[str, str], int] | None = None  # accepted (machine, key id) and seq
    ack: bytes | None = None  # the signed ``acks`` payload naming ack_id, for the device


def _refused(reason: str) -> DeviceOutcome:
    return DeviceOutcome(status="refused", reason=reason)


def _event_id(message: CashCredit | DispenseResult | Inventory, body: str) -> str:
    if isinstance(message, Inventory):
        # A report has no id of its own; a resend of it is the same body.
        return "inventory-" + hashlib.sha256(body.encode()).hexdigest()[:32]
    return message.id


def _in_ledger(db: Db, machine_id: str, message: CashCredit | DispenseResult | Inventory) -> bool:
    """Whether this money event is recorded already (then a stale resend is acknowledged)."""
    if isinstance(message, CashCredit):
        row = db.execute(
            "SELECT 1 FROM cash_credits WHERE id = ? AND machine_id = ?", [message.id, machine_id]
        ).fetchone()
    elif isinstance(message, DispenseResult):
        row = db.execute(
            "SELECT 1 FROM dispense_commands WHERE cmd_id = ? AND machine_id = ? "
            "AND result IS NOT NULL",
            [message.cmd_id, machine_id],
        ).fetchone()
    else:
        row = None
    return row is not None


def apply(
    db: Db, machine_id: str, suffix: str, payload: bytes, known: sequences.Marks
) -> DeviceOutcome:
    machine = db.execute(
        "SELECT command_key FROM machines WHERE id = ? AND status = 'active'", [machine_id]
    ).fetchone()
    if machine is None:
        return _refused(UNKNOWN_MACHINE)
    secret = sealed.open_command_key(db, machine_id, machine["command_key"])
    outcome = _apply(db, machine_id, up_key(secret), suffix, payload, known)
    if outcome.ack_id is None:
        return outcome
    ack = sign_acks(down_key(secret), machine_id, [outcome.ack_id], int(time.time()))
    return replace(outcome, ack=ack)


def _apply(
    db: Db, machine_id: str, key: bytes, suffix: str, payload: bytes, known: sequences.Marks
) -> DeviceOutcome:
    try:
        header, body = verify_device_message(key, payload)
    except MalformedEnvelope:
        return _refused(UNSIGNED)
    except BadSignature:
        return _refused(BAD_SIGNATURE)
    except MalformedBody:
        return _refused(MALFORMED)
    if header.mid != machine_id:
        return _refused(WRONG_MACHINE)
    try:
        message = _MODELS[suffix].model_validate_json(body)
    except ValidationError:
        return _refused(MALFORMED)
    if isinstance(message, CashCredit) and ledger.credit_id_taken(db, machine_id, message.id):
        return _refused(FOREIGN_ID)
    kid = key_id(key)
    event_id = _event_id(message, body)
    money = not isinstance(message, Inventory)
    ack_id = event_id if money else None
    verdict = sequences.admit(
        db, machine_id, kid, header.seq, event_id, suffix, known.get((machine_id, kid), 0)
    )
    if verdict == "replay":
        return _refused(REPLAY)
    if verdict == "duplicate":
        return DeviceOutcome(status="duplicate", ack_id=ack_id, message=message)
    if verdict == "stale":
        if money and _in_ledger(db, machine_id, message):
            return DeviceOutcome(status="duplicate", ack_id=ack_id, message=message)
        return _refused(REPLAY)
    mark = ((machine_id, kid), header.seq)
    match message:
        case CashCredit():
            credit = ledger.record_cash_credit(db, machine_id, message)
            status: Status = "duplicate" if credit.duplicate else "applied"
            return DeviceOutcome(status, None, ack_id, message, credit.order_id, mark)
        case DispenseResult():
            result = ledger.device_result(db, machine_id, message)
            status = cast(Status, result.status)
            return DeviceOutcome(status, None, ack_id, message, result.order_id, mark)
        case Inventory():
            db.execute(
                "UPDATE machines SET last_seen = ? WHERE id = ?", [ledger.now_iso(), machine_id]
            )
            return DeviceOutcome("applied", None, None, message, None, mark)
