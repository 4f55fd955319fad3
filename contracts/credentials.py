"""Device credentials: the MQTT secret (stored only as a hash) and the command-signing key.

The cloud shows both once at onboarding; it keeps the secret's hash and the command key (the
gateway needs the key itself to sign commands). The hash format is self-describing so that the
gateway can verify without knowing how it was made::

    pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>
"""

import hashlib
import hmac
import secrets

_ALGO = "pbkdf2_sha256"
_ITERATIONS = 100_000


class CredentialFormatError(ValueError):
    """A stored secret hash is not in the expected format."""


def new_mqtt_secret() -> str:
    return secrets.token_urlsafe(24)


def new_command_key() -> str:
    """Hex text of 32 random bytes; devices and gateways use ``bytes.fromhex`` of it."""
    return secrets.token_hex(32)


def hash_secret(secret: str, *, iterations: int = _ITERATIONS) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, iterations)
    return f"{_ALGO}${iterations}${salt.hex()}${digest.hex()}"


def verify_secret(secret: str, stored: str) -> bool:
    try:
        algo, iterations, salt_hex, digest_hex = stored.split("$")
        if algo != _ALGO:
            raise CredentialFormatError(f"unknown hash algorithm {algo!r}")
        salt, expected, rounds = bytes.fromhex(salt_hex), bytes.fromhex(digest_hex), int(iterations)
    except ValueError as exc:
        raise CredentialFormatError("malformed secret hash") from exc
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, rounds)
    return hmac.compare_digest(digest, expected)
