"""JWT signing keys with ids (``kid``) that rotate.

The key file (``jwt_keys.json`` in the data directory, or ``JWT_KEYS_FILE``, e.g. a mounted
Kubernetes secret) holds every key still able to verify: one ``active`` key signs, ``staged``
keys verify but do not sign yet (so every replica knows a key before any replica signs with it),
``retired`` keys verify until the tokens they signed have expired and are then dropped. Without a
key file the configured or generated ``jwt_secret`` is the only key. Secrets never reach a log.
"""

import hashlib
import json
import logging
import os
import secrets
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from cloud.db.times import as_utc, utcnow
from cloud.errors import ConfigurationError
from cloud.settings import CloudSettings

log = logging.getLogger(__name__)
KeyState = Literal["active", "staged", "retired"]
# Clock skew between replicas, and a token signed just before its key retired.
RETIRE_GRACE_S = 60
_RELOAD_EVERY_S = 1.0


class KeyFileError(ConfigurationError):
    """The key file cannot be read or holds no usable key."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    secret: str
    state: KeyState
    created_at: datetime
    retired_at: datetime | None = None
    # The pre-rotation secret: it also verifies tokens issued before tokens carried a kid.
    legacy: bool = False

    def verifies_at(self, now: datetime, ttl_s: int) -> bool:
        if self.retired_at is None:
            return True
        return now <= self.retired_at + timedelta(seconds=ttl_s + RETIRE_GRACE_S)

    def __repr__(self) -> str:  # never print the secret
        return f"SigningKey(kid={self.kid!r}, state={self.state!r})"


@dataclass(frozen=True)
class KeyRing:
    keys: tuple[SigningKey, ...]

    @property
    def active(self) -> SigningKey:
        for key in self.keys:
            if key.state == "active":
                return key
        raise KeyFileError("no active JWT signing key")

    def find(self, kid: str | None) -> SigningKey | None:
        for key in self.keys:
            if (key.kid == kid) if kid is not None else key.legacy:
                return key
        return None

    def to_json(self) -> str:
        return json.dumps(
            {
                "keys": [
                    {
                        "kid": k.kid,
                        "secret": k.secret,
                        "state": k.state,
                        "created_at": k.created_at.isoformat(),
                        "retired_at": k.retired_at.isoformat() if k.retired_at else None,
                        "legacy": k.legacy,
                    }
                    for k in self.keys
                ]
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> "KeyRing":
        try:
            raw: Any = json.loads(text)
            keys = tuple(
                SigningKey(
                    kid=str(item["kid"]),
                    secret=str(item["secret"]),
                    state=item["state"],
                    created_at=as_utc(datetime.fromisoformat(item["created_at"])),
                    retired_at=as_utc(datetime.fromisoformat(item["retired_at"]))
                    if item.get("retired_at")
                    else None,
                    legacy=bool(item.get("legacy", False)),
                )
                for item in raw["keys"]
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyFileError(f"JWT key file is malformed: {type(exc).__name__}") from exc
        for key in keys:
            if key.state not in ("active", "staged", "retired") or len(key.secret) < 32:
                raise KeyFileError(f"JWT key {key.kid!r} is malformed or shorter than 32")
        ring = cls(keys)
        ring.active  # noqa: B018 - refuse a file without an active key at load
        return ring


def legacy_kid(secret: str) -> str:
    # Derived from the secret, so every replica configured with it names it the same.
    return "s-" + hashlib.sha256(b"vending-jwt-kid:" + secret.encode()).hexdigest()[:12]


def _legacy_ring(settings: CloudSettings) -> KeyRing:
    secret = settings.resolve_jwt_secret()
    key = SigningKey(legacy_kid(secret), secret, "active", utcnow(), legacy=True)
    return KeyRing((key,))


def load_key_ring(settings: CloudSettings) -> KeyRing:
    path = settings.resolve_jwt_keys_file()
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        if settings.environment == "production" and settings.jwt_secret is None:
            # Never a generated secret in production: it would differ on every replica.
            raise KeyFileError(
                f"JWT key file {path} does not exist; create it with vending-cloud rotate-jwt-key"
            ) from exc
        return _legacy_ring(settings)
    except OSError as exc:
        raise KeyFileError(f"cannot read JWT key file {path}: {exc.strerror}") from exc
    return KeyRing.from_json(text)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def rotate(settings: CloudSettings, *, stage: bool = False, now: datetime | None = None) -> str:
    """Adds a key (or promotes the staged one) and retires the active one; drops keys whose
    tokens have all expired. ``stage``: add a verify-only key, to be activated by the next
    rotation once every replica has it. Returns the new (or promoted) key's kid."""
    now = now or utcnow()
    ttl = settings.access_token_ttl_s
    try:
        ring = load_key_ring(settings)
    except KeyFileError:
        if settings.resolve_jwt_keys_file().exists():
            raise
        ring = KeyRing(())  # production's first key file: nothing to carry over
    keys = [k for k in ring.keys if k.verifies_at(now, ttl)]
    staged = next((k for k in keys if k.state == "staged"), None)
    if stage:
        if staged is not None:
            return staged.kid
        fresh = SigningKey(uuid.uuid4().hex[:16], secrets.token_urlsafe(48), "staged", now)
        keys.append(fresh)
        kid = fresh.kid
    else:
        promoted = staged or SigningKey(
            uuid.uuid4().hex[:16], secrets.token_urlsafe(48), "staged", now
        )
        keys = [
            replace(k, state="retired", retired_at=now) if k.state == "active" else k
            for k in keys
            if k.kid != promoted.kid
        ]
        keys.append(replace(promoted, state="active"))
        kid = promoted.kid
    _write_private(settings.resolve_jwt_keys_file(), KeyRing(tuple(keys)).to_json())
    return kid


def prune(settings: CloudSettings, *, now: datetime | None = None) -> list[str]:
    """Drops retired keys whose tokens have all expired; returns their kids."""
    now = now or utcnow()
    path = settings.resolve_jwt_keys_file()
    if not path.exists():
        return []
    ring = load_key_ring(settings)
    keep = tuple(k for k in ring.keys if k.verifies_at(now, settings.access_token_ttl_s))
    dropped = [k.kid for k in ring.keys if k not in keep]
    if dropped:
        _write_private(path, KeyRing(keep).to_json())
    return dropped


class KeySource:
    """The ring as the API process sees it: re-read when the key file changes (checked at most
    once a second), so a rotation reaches running processes without a restart."""

    def __init__(self, settings: CloudSettings) -> None:
        self._settings = settings
        self._path = settings.resolve_jwt_keys_file()
        self._stamp = self._file_stamp()
        self._ring = load_key_ring(settings)
        self._checked = time.monotonic()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self._path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_ino)

    def ring(self) -> KeyRing:
        now = time.monotonic()
        if now - self._checked >= _RELOAD_EVERY_S:
            self._checked = now
            stamp = self._file_stamp()
            if stamp != self._stamp:
                # A half-rotated or broken file keeps the last good ring.
                try:
                    self._ring = load_key_ring(self._settings)
                    self._stamp = stamp
                except KeyFileError as exc:
                    log.warning("JWT key file not reloaded: %s", exc.message)
        return self._ring
