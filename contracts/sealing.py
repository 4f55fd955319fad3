"""Sealed values: secrets at rest (device keys, customer phone numbers) in the cloud's and the
gateway's databases, encrypted with AES-256-GCM under a master key from settings.

A sealed value is text::

    v1.<kid>.<base64url(nonce || ciphertext || tag)>

``kid`` names the master key that sealed it, so keys rotate: a ``KeyRing`` holds one active key
(it seals) and any number of older ones (they only open). The associated data is the header
(``v1.<kid>``) plus a context naming the table, column and row (``machines.command_key:<id>``),
so a sealed value copied into another row or column does not open.

Master keys are configured as text, one ``kid:key`` entry per line or comma, the key being 32
bytes in hex (64 characters) or unpadded base64url (43 characters). The first entry is the
active key; the rest are older keys kept until ``rekey`` has re-sealed everything under the new
one. The same text works as an environment variable or as a mounted secret file.
"""

import base64
import binascii
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = "v1"
KEY_BYTES = 32
NONCE_BYTES = 12
_KID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_SEALED = re.compile(r"^v1\.([A-Za-z0-9_-]{1,32})\.([A-Za-z0-9_-]+)$")
# A value sealed by a key and context at start shows the key ring still opens this database.
CANARY_TEXT = "vending-sealing-canary"


class SealingError(Exception):
    """Root of sealing failures."""


class KeyConfigError(SealingError):
    """The master key setting is malformed (bad kid, key length, duplicate kid)."""


class UnknownKeyId(SealingError):
    """A sealed value names a key id that is not configured."""


class UnsealError(SealingError):
    """A sealed value does not open: wrong key, another row's value, or tampered bytes."""


def is_sealed(value: str | None) -> bool:
    return value is not None and _SEALED.match(value) is not None


def _decode_key(kid: str, text: str) -> bytes:
    text = text.strip()
    raw: bytes | None = None
    if len(text) == KEY_BYTES * 2:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = None
    if raw is None:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError) as exc:
            raise KeyConfigError(f"master key {kid!r} is neither hex nor base64url") from exc
    if len(raw) != KEY_BYTES:
        raise KeyConfigError(f"master key {kid!r} must be {KEY_BYTES} bytes, not {len(raw)}")
    return raw


@dataclass(frozen=True)
class KeyRing:
    active: str
    keys: Mapping[str, bytes] = field(repr=False)

    def __post_init__(self) -> None:
        if self.active not in self.keys:
            raise KeyConfigError(f"active master key {self.active!r} is not in the key ring")
        for kid, key in self.keys.items():
            if not _KID.match(kid):
                raise KeyConfigError(f"master key id {kid!r}: use 1-32 of A-Z a-z 0-9 _ -")
            if len(key) != KEY_BYTES:
                raise KeyConfigError(f"master key {kid!r} must be {KEY_BYTES} bytes")

    @classmethod
    def parse(cls, text: str) -> "KeyRing":
        """``kid:key`` entries separated by newlines or commas; the first one is active."""
        entries = [e.strip() for e in re.split(r"[,\n]", text) if e.strip()]
        if not entries:
            raise KeyConfigError("no master key configured")
        keys: dict[str, bytes] = {}
        for entry in entries:
            kid, sep, key = entry.partition(":")
            kid = kid.strip()
            if not sep:
                raise KeyConfigError("a master key entry is kid:key (key is 64 hex characters)")
            if not _KID.match(kid):
                raise KeyConfigError(f"master key id {kid!r}: use 1-32 of A-Z a-z 0-9 _ -")
            if kid in keys:
                raise KeyConfigError(f"master key id {kid!r} appears twice")
            keys[kid] = _decode_key(kid, key)
        return cls(active=next(iter(keys)), keys=keys)

    @staticmethod
    def generate_text(kid: str | None = None) -> str:
        """A new ``kid:hexkey`` entry (what ``rekey --new-key`` and first starts write)."""
        kid = kid or f"k{secrets.token_hex(4)}"
        return f"{kid}:{secrets.token_hex(KEY_BYTES)}"

    def _aad(self, kid: str, context: str) -> bytes:
        return f"{VERSION}.{kid}|{context}".encode()

    def seal(self, plaintext: str, context: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self.keys[self.active]).encrypt(
            nonce, plaintext.encode(), self._aad(self.active, context)
        )
        body = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")
        return f"{VERSION}.{self.active}.{body}"

    def open(self, sealed: str, context: str) -> str:
        match = _SEALED.match(sealed)
        if match is None:
            raise UnsealError(f"{context}: not a sealed value")
        kid, body = match.groups()
        key = self.keys.get(kid)
        if key is None:
            raise UnknownKeyId(
                f"{context}: sealed with master key {kid!r}, which is not configured"
            )
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError) as exc:
            raise UnsealError(f"{context}: malformed sealed value") from exc
        if len(raw) < NONCE_BYTES + 16:
            raise UnsealError(f"{context}: malformed sealed value")
        try:
            plaintext = AESGCM(key).decrypt(
                raw[:NONCE_BYTES], raw[NONCE_BYTES:], self._aad(kid, context)
            )
        except InvalidTag as exc:
            raise UnsealError(
                f"{context}: does not open with master key {kid!r} (wrong key, or a value "
                "moved from another row, or tampered)"
            ) from exc
        return plaintext.decode()

    def seal_optional(self, plaintext: str | None, context: str) -> str | None:
        return None if plaintext is None else self.seal(plaintext, context)

    def open_optional(self, sealed: str | None, context: str) -> str | None:
        return None if sealed is None else self.open(sealed, context)

    def kid_of(self, sealed: str) -> str | None:
        match = _SEALED.match(sealed)
        return match.group(1) if match else None

    def needs_reseal(self, value: str | None) -> bool:
        """Plaintext (from before sealing) or sealed under a key that is no longer active."""
        return value is not None and (not is_sealed(value) or self.kid_of(value) != self.active)

    def reseal(self, value: str, context: str) -> str:
        """``value`` sealed under the active key: plaintext is sealed, an older seal re-sealed."""
        plaintext = self.open(value, context) if is_sealed(value) else value
        return self.seal(plaintext, context)

    def canary(self, kid: str) -> str:
        """A known value sealed under ``kid``: stored beside the data, checked at every start."""
        other = KeyRing(active=kid, keys=self.keys)
        return other.seal(CANARY_TEXT, f"sealing_canary:{kid}")

    def check_canary(self, kid: str, sealed: str) -> None:
        """Raise ``UnknownKeyId`` or ``UnsealError`` with a message for operators."""
        if kid not in self.keys:
            raise UnknownKeyId(
                f"the database holds values sealed with master key {kid!r}, which is not "
                "configured: add it (as an older key) or restore the right key"
            )
        try:
            ok = self.open(sealed, f"sealing_canary:{kid}") == CANARY_TEXT
        except SealingError as exc:
            raise UnsealError(
                f"master key {kid!r} does not match the key this database was sealed with"
            ) from exc
        if not ok:
            raise UnsealError(f"master key {kid!r}: the canary does not match")


def load_key_ring(
    inline: str | None, file: Path | None, generated: Path | None, *, allow_generate: bool
) -> KeyRing:
    """The key ring from ``inline`` text, else ``file``, else the generated file in a private
    data directory (created on first use, mode 0600, when ``allow_generate``)."""
    if inline:
        return KeyRing.parse(inline)
    if file is not None:
        try:
            return KeyRing.parse(file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise KeyConfigError(f"cannot read master key file {file}: {exc.strerror}") from exc
    if generated is None or not allow_generate:
        raise KeyConfigError("no master key configured (set the master key or its file)")
    if generated.exists():
        return KeyRing.parse(generated.read_text(encoding="utf-8"))
    generated.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = KeyRing.generate_text() + "\n"
    tmp = generated.with_name(f".{generated.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        # link, not replace: two processes starting at once must not end with two keys.
        os.link(tmp, generated)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return KeyRing.parse(generated.read_text(encoding="utf-8"))
