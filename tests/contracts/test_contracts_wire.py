"""The shared wire contracts: money stays integral, long reasons never cost a result, signatures
cover the exact bytes."""

import json

import pytest
from pydantic import ValidationError

from contracts.credentials import new_command_key
from contracts.device_messages import MAX_REASON, CashCredit, DispenseResult
from contracts.signing import DispenseCommandBody, SignatureError, sign_command, verify_command


def test_a_long_reason_is_clipped_not_refused() -> None:
    result = DispenseResult(
        id="cmd00001", cmd_id="cmd00001", order_id="o1", item_id="i1", slot="A1",
        result="failed", reason="jam " * 300, ts=1,
    )  # fmt: skip
    assert result.reason is not None and len(result.reason) == MAX_REASON


@pytest.mark.parametrize("amount", [12.5, "1000", 0, -5, True])
def test_cash_amounts_are_positive_integers_only(amount: object) -> None:
    with pytest.raises(ValidationError):
        CashCredit.model_validate({"id": "credit0001", "amount": amount, "ts": 1})


def test_signature_covers_the_exact_body_bytes() -> None:
    key = bytes.fromhex(new_command_key())
    body = DispenseCommandBody(
        cmd_id="cmd00001", mid="M1", order_id="o1", item_id="i1", slot="A1", ctr=7, exp=2, ts=1
    )
    payload = sign_command(key, body)
    assert verify_command(key, payload) == body
    envelope = json.loads(payload)
    envelope["body"] = envelope["body"].replace('"ctr":7', '"ctr": 7')  # same JSON, other bytes
    with pytest.raises(SignatureError):
        verify_command(key, json.dumps(envelope).encode())
    with pytest.raises(SignatureError):
        verify_command(bytes.fromhex(new_command_key()), payload)
