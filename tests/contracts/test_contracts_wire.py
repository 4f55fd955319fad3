"""The shared wire contracts: money stays integral, long reasons never cost a result, signatures
cover the exact bytes."""

import hashlib
import hmac
import json

import pytest
from pydantic import ValidationError

from contracts.credentials import new_command_key
from contracts.device_messages import MAX_REASON, CashCredit, DispenseResult
from contracts.signing import (
    BadSignature,
    DispenseCommandBody,
    MalformedBody,
    MalformedEnvelope,
    SignatureError,
    down_key,
    read_acks,
    sign_acks,
    sign_command,
    sign_device_message,
    up_key,
    verify_acks,
    verify_command,
    verify_device_message,
)


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


def test_each_direction_has_its_own_key() -> None:
    secret = bytes.fromhex(new_command_key())
    assert len({secret, down_key(secret), up_key(secret)}) == 3
    body = DispenseCommandBody(
        cmd_id="cmd00001", mid="M1", order_id="o1", item_id="i1", slot="A1", ctr=7, exp=2, ts=1
    )
    command = sign_command(down_key(secret), body)
    # A command does not pass as a device message, nor the other way round.
    with pytest.raises(BadSignature):
        verify_device_message(up_key(secret), command)
    message = sign_device_message(up_key(secret), "M1", 5, {"id": "credit0001", "amount": 100})
    with pytest.raises(BadSignature):
        verify_command(down_key(secret), message)


def test_a_signed_device_message_carries_mid_and_seq_over_the_exact_bytes() -> None:
    key = up_key(bytes.fromhex(new_command_key()))
    credit = CashCredit(id="credit0001", amount=1000, ts=1)
    payload = sign_device_message(key, "M1", 42, credit.model_dump(mode="json"))
    header, body = verify_device_message(key, payload)
    assert (header.mid, header.seq) == ("M1", 42)
    assert CashCredit.model_validate_json(body) == credit
    envelope = json.loads(payload)
    envelope["body"] = envelope["body"].replace('"amount":1000', '"amount":9000')
    with pytest.raises(BadSignature):
        verify_device_message(key, json.dumps(envelope).encode())
    with pytest.raises(MalformedEnvelope):
        verify_device_message(key, credit.model_dump_json().encode())  # unsigned
    unnumbered = json.dumps(
        {"v": 1, "body": "{}", "sig": hmac.new(key, b"{}", hashlib.sha256).hexdigest()}
    ).encode()
    with pytest.raises(MalformedBody):
        verify_device_message(key, unnumbered)


def test_an_ack_is_signed_with_the_down_key_over_mid_ids_and_ts() -> None:
    secret = bytes.fromhex(new_command_key())
    payload = sign_acks(down_key(secret), "M1", ["credit0001", "cmd00001"], 1795770391)
    acks = verify_acks(down_key(secret), payload)
    assert (acks.mid, acks.ids, acks.ts) == ("M1", ["credit0001", "cmd00001"], 1795770391)
    assert read_acks(payload) == acks
    envelope = json.loads(payload)
    envelope["body"] = envelope["body"].replace("credit0001", "credit0002")
    with pytest.raises(BadSignature):
        verify_acks(down_key(secret), json.dumps(envelope).encode())
    with pytest.raises(MalformedEnvelope):
        verify_acks(down_key(secret), b'{"ids": ["credit0001"]}')  # the old, unsigned form
    with pytest.raises(BadSignature):
        verify_acks(up_key(secret), payload)  # a device key never makes an ack
    # A command signed with the same key is no ack (its body has no ids).
    body = DispenseCommandBody(
        cmd_id="cmd00001", mid="M1", order_id="o1", item_id="i1", slot="A1", ctr=7, exp=2, ts=1
    )
    with pytest.raises(MalformedBody):
        verify_acks(down_key(secret), sign_command(down_key(secret), body))
    with pytest.raises(ValidationError):
        sign_acks(down_key(secret), "M1", [], 1)  # an ack names at least one event
