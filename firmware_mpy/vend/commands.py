# Verifying what the gateway signs with k_down (contracts/signing.py on the host side): dispense
# commands and acks, in this order: JSON envelope, version, HMAC over the body bytes exactly as
# received, machine id, body fields. Counter, expiry and the journal are the dispenser's business.
import json

from micropython import const

from vend import hmac

VERSION = 1
_ID_CHARS = const("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_SLOT_CHARS = const("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


class Refused(Exception):
    """The command is not acted on; args[0] is the reason that goes into the log."""


def _chars_ok(s, allowed, lo, hi):
    if not isinstance(s, str) or not lo <= len(s) <= hi:
        return False
    for c in s:
        if c not in allowed:
            return False
    return True


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def open_signed(payload, key, machine_id):
    """-> the body (a dict) of what the gateway signed for this machine, or raise Refused(reason).
    Acks need nothing more: no counter, since an ack names only ids the gateway persisted and a
    replayed genuine one is harmless."""
    try:
        env = json.loads(payload)
    except ValueError:
        raise Refused("malformed_envelope")
    if not isinstance(env, dict):
        raise Refused("malformed_envelope")
    body_text = env.get("body")
    sig = env.get("sig")
    if not isinstance(body_text, str) or not isinstance(sig, str):
        raise Refused("malformed_envelope")
    if env.get("v") != VERSION:
        raise Refused("bad_version")
    if not hmac.compare(hmac.hexdigest(key, body_text), sig):
        raise Refused("bad_signature")
    try:
        body = json.loads(body_text)
    except ValueError:
        raise Refused("malformed_body")
    if not isinstance(body, dict):
        raise Refused("malformed_body")
    if body.get("mid") != machine_id:
        raise Refused("wrong_mid")
    return body


def verify(payload, key, machine_id):
    """-> the command body as a dict, or raise Refused(reason)."""
    body = open_signed(payload, key, machine_id)
    ok = (
        _chars_ok(body.get("cmd_id"), _ID_CHARS, 8, 64)
        and isinstance(body.get("order_id"), str)
        and isinstance(body.get("item_id"), str)
        and _chars_ok(body.get("slot"), _SLOT_CHARS, 1, 8)
        and _is_int(body.get("ctr"))
        and body["ctr"] > 0
        and _is_int(body.get("exp"))
        and _is_int(body.get("ts"))
    )
    if not ok:
        raise Refused("malformed_body")
    return body
