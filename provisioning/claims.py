"""Claim codes: a short one-time code that lets a second technician (or a phone) fetch a
machine's device bundle from the cloud without the cloud ever holding it in the clear.

- The code is 16 random Crockford base32 characters (80 bits), shown as ``XXXX-XXXX-XXXX-XXXX``.
  Normalising upper-cases it, drops spaces and dashes, and maps the look-alikes I/L to 1 and
  O to 0, so a code read aloud or typed from paper still matches.
- The cloud stores ``sha256(normalised code)`` (hex) as the lookup key, never the code.
- The bundle is encrypted with AES-256-GCM under ``HKDF-SHA256(ikm=code, salt=machine id,
  info="vending-claim/v1")`` with a random 96-bit nonce and the machine id as associated data,
  so a ciphertext moved to another machine's claim does not decrypt.

The claim lives at most an hour and is redeemed once (the cloud then drops the ciphertext). The
80 bits are sized for the worst case: someone who copies the cloud's database (hash and
ciphertext) while a claim is open and then searches the code space offline.
"""

import base64
import binascii
import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from provisioning.errors import ClaimError, InvalidInput

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U
CODE_LENGTH = 16
GROUP = 4
URI_SCHEME = "vending-claim"
KDF_INFO = b"vending-claim/v1"
NONCE_BYTES = 12
_LOOKALIKES = str.maketrans({"I": "1", "L": "1", "O": "0"})


@dataclass(frozen=True)
class SealedBundle:
    ciphertext: str  # base64
    nonce: str  # base64


def new_code() -> str:
    raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
    return format_code(raw)


def format_code(code: str) -> str:
    return "-".join(code[i : i + GROUP] for i in range(0, len(code), GROUP))


def normalise_code(text: str) -> str:
    code = "".join(text.split()).replace("-", "").upper().translate(_LOOKALIKES)
    if len(code) != CODE_LENGTH or any(c not in ALPHABET for c in code):
        raise InvalidInput(
            f"not a claim code: expected {CODE_LENGTH} characters like ABCD-EFGH-2345-6789"
        )
    return code


def code_hash(code: str) -> str:
    return hashlib.sha256(normalise_code(code).encode("ascii")).hexdigest()


def derive_key(code: str, machine_id: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=machine_id.encode(), info=KDF_INFO)
    return hkdf.derive(normalise_code(code).encode("ascii"))


def seal(bundle: dict[str, Any], code: str, machine_id: str) -> SealedBundle:
    nonce = secrets.token_bytes(NONCE_BYTES)
    plaintext = json.dumps(bundle, sort_keys=True).encode()
    ciphertext = AESGCM(derive_key(code, machine_id)).encrypt(nonce, plaintext, machine_id.encode())
    return SealedBundle(
        ciphertext=base64.b64encode(ciphertext).decode("ascii"),
        nonce=base64.b64encode(nonce).decode("ascii"),
    )


def unseal(sealed: SealedBundle, code: str, machine_id: str) -> dict[str, Any]:
    try:
        ciphertext = base64.b64decode(sealed.ciphertext, validate=True)
        nonce = base64.b64decode(sealed.nonce, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ClaimError("the claimed bundle is not valid base64") from exc
    if len(nonce) != NONCE_BYTES:
        raise ClaimError("the claimed bundle has a malformed nonce")
    try:
        plaintext = AESGCM(derive_key(code, machine_id)).decrypt(
            nonce, ciphertext, machine_id.encode()
        )
    except InvalidTag as exc:
        raise ClaimError(
            "the claimed bundle does not decrypt with this code (wrong code or tampered data)"
        ) from exc
    try:
        bundle = json.loads(plaintext)
    except ValueError as exc:
        raise ClaimError("the claimed bundle is not JSON") from exc
    if not isinstance(bundle, dict):
        raise ClaimError("the claimed bundle is not a JSON object")
    return bundle


def claim_uri(cloud_url: str, code: str) -> str:
    """What the QR code carries: where to redeem and the code; never a secret of the device."""
    return f"{URI_SCHEME}:?" + urlencode({"cloud": cloud_url, "code": code})


def parse_claim(text: str) -> tuple[str | None, str]:
    """A bare code (``ABCD-EFGH-2345-6789``) or a scanned ``vending-claim:?cloud=...&code=...`` URI;
    returns ``(cloud_url or None, normalised code)``."""
    text = text.strip()
    if not text.lower().startswith(f"{URI_SCHEME}:"):
        return None, normalise_code(text)
    query = parse_qs(urlsplit(text).query)
    codes, clouds = query.get("code", []), query.get("cloud", [])
    if len(codes) != 1:
        raise InvalidInput("the claim URI has no code")
    return (clouds[0] if clouds else None), normalise_code(codes[0])
