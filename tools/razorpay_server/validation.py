"""Validation of request bodies, with the field names and refusals Razorpay documents.

Each function takes the decoded JSON body and returns clean values or raises ``InputInvalid``
naming the offending field, so the adapter under test sees the same 400s it would in production.
"""

import re
from dataclasses import dataclass
from typing import Any

from tools.razorpay_server.errors import BadRequest, InputInvalid

MAX_NOTES = 15
MAX_NOTE_CHARS = 256
MIN_AMOUNT = 100  # paise: Razorpay's smallest payment and refund is INR 1.00
MAX_UNIX_TIME = 2_147_483_647
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_-]{10,}")

QR_FIELDS = {
    "type",
    "name",
    "usage",
    "fixed_amount",
    "payment_amount",
    "description",
    "customer_id",
    "close_by",
    "notes",
}
REFUND_FIELDS = {"amount", "speed", "notes", "receipt"}


def refuse_extra(body: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(body) - allowed)
    if extra:
        raise BadRequest(f"{', '.join(extra)} is/are not required and should not be sent")


def is_int(value: Any) -> bool:
    # JSON true/false decode to bool, which Python counts as int; Razorpay does not.
    return isinstance(value, int) and not isinstance(value, bool)


def opt_str(body: dict[str, Any], name: str, max_len: int = 255) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputInvalid(f"The {name} must be a string.", field=name)
    if len(value) > max_len:
        raise InputInvalid(f"The {name} may not be greater than {max_len} characters.", field=name)
    return value


def notes(body: dict[str, Any]) -> dict[str, Any]:
    value = body.get("notes")
    if value is None or value == []:  # PHP-born APIs accept an empty list as "no notes"
        return {}
    if not isinstance(value, dict):
        raise InputInvalid("The notes must be an object of key-value pairs.", field="notes")
    if len(value) > MAX_NOTES:
        raise InputInvalid(
            f"Number of notes should be less than or equal to {MAX_NOTES}", field="notes"
        )
    for key, item in value.items():
        if not isinstance(item, str | int | float) or isinstance(item, bool):
            raise InputInvalid(f"The notes.{key} must be a string or a number.", field="notes")
        if len(str(item)) > MAX_NOTE_CHARS:
            raise InputInvalid(
                f"The notes.{key} may not be greater than {MAX_NOTE_CHARS} characters.",
                field="notes",
            )
    return dict(value)


@dataclass(frozen=True)
class QrRequest:
    type: str
    name: str | None
    usage: str
    fixed_amount: bool
    payment_amount: int | None
    description: str | None
    customer_id: str | None
    close_by: int | None
    notes: dict[str, Any]


def qr_request(body: dict[str, Any], *, now: int, min_close_by_s: int) -> QrRequest:
    refuse_extra(body, QR_FIELDS)
    qr_type = body.get("type")
    if qr_type is None:
        raise InputInvalid("The type field is required.", field="type")
    if qr_type != "upi_qr":
        # bharat_qr exists at Razorpay; the vending fleet only takes UPI, so the test server too.
        raise InputInvalid(
            "The type must be upi_qr (the only type this server supports).", field="type"
        )
    usage = body.get("usage")
    if usage is None:
        raise InputInvalid("The usage field is required.", field="usage")
    if usage not in ("single_use", "multiple_use"):
        raise InputInvalid("The selected usage is invalid.", field="usage")
    fixed = body.get("fixed_amount", False)
    if not isinstance(fixed, bool):
        raise InputInvalid("The fixed_amount field must be true or false.", field="fixed_amount")
    amount = body.get("payment_amount")
    if fixed:
        if amount is None:
            raise InputInvalid(
                "The payment_amount field is required when fixed_amount is true.",
                field="payment_amount",
            )
        if not is_int(amount):
            raise InputInvalid("The payment_amount must be an integer.", field="payment_amount")
        if amount < MIN_AMOUNT:
            raise InputInvalid(
                "The payment_amount must be at least INR 1.00", field="payment_amount"
            )
    elif amount is not None:
        raise InputInvalid(
            "The payment_amount field may be sent only when fixed_amount is true.",
            field="payment_amount",
        )
    close_by = body.get("close_by")
    if close_by is not None:
        if not is_int(close_by):
            raise InputInvalid("The close_by must be an integer.", field="close_by")
        if usage != "single_use":
            raise InputInvalid(
                "close_by is allowed only for single_use QR codes.", field="close_by"
            )
        if close_by < now + min_close_by_s:
            raise InputInvalid(
                f"close_by should be at least {_human(min_close_by_s)} after current time",
                field="close_by",
            )
        if close_by > MAX_UNIX_TIME:
            raise InputInvalid("The close_by must be a valid unix timestamp.", field="close_by")
    return QrRequest(
        type=qr_type,
        name=opt_str(body, "name"),
        usage=usage,
        fixed_amount=fixed,
        payment_amount=amount,
        description=opt_str(body, "description", 2048),
        customer_id=opt_str(body, "customer_id"),
        close_by=close_by,
        notes=notes(body),
    )


def _human(seconds: int) -> str:
    if seconds % 60 == 0 and seconds >= 60:
        minutes = seconds // 60
        return f"{minutes} minute" + ("s" if minutes != 1 else "")
    return f"{seconds} second" + ("s" if seconds != 1 else "")


@dataclass(frozen=True)
class RefundRequest:
    amount: int | None
    speed: str
    notes: dict[str, Any]
    receipt: str | None


def refund_request(body: dict[str, Any]) -> RefundRequest:
    refuse_extra(body, REFUND_FIELDS)
    amount = body.get("amount")
    if amount is not None:
        if not is_int(amount):
            raise InputInvalid("The amount must be an integer.", field="amount")
        if amount < MIN_AMOUNT:
            raise InputInvalid("The amount must be at least INR 1.00", field="amount")
    speed = body.get("speed", "normal")
    if speed not in ("normal", "optimum"):
        raise InputInvalid("The selected speed is invalid.", field="speed")
    return RefundRequest(
        amount=amount, speed=speed, notes=notes(body), receipt=opt_str(body, "receipt", 40)
    )


def idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not IDEMPOTENCY_KEY.fullmatch(value):
        raise BadRequest(
            "The X-Refund-Idempotency header must be at least 10 characters of letters, digits,"
            " hyphens and underscores."
        )
    return value
