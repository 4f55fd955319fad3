"""Access tokens (JWT, HS256, ``kid`` in the header) and opaque refresh tokens (stored only as
SHA-256). An access token names its session (``sid``) and the user's token version (``ver``);
``cloud.auth.sessions`` checks both against the database on every request."""

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

import jwt

from cloud.auth.keys import KeySource
from cloud.auth.permissions import Role, permissions_for
from cloud.db.times import utcnow
from cloud.errors import Unauthorized

ALGORITHM = "HS256"


@dataclass(frozen=True)
class Principal:
    user_id: str
    tenant_id: str
    role: Role
    permissions: frozenset[str]
    session_id: str = ""


@dataclass(frozen=True)
class TokenClaims:
    user_id: str
    tenant_id: str
    session_id: str
    token_version: int


# Tokens whose signature this process has verified (token text -> claims, kid, exp). Only the
# signature check and the claims parse are skipped on a hit: the key must still be in the ring and
# usable, the token unexpired, and the session/user row is still read on every request
# (cloud.auth.sessions), so revocation stays immediate. PyJWT's parse was ~15 % of a read.
_VERIFIED_CACHE_SIZE = 4096


class AccessTokens:
    def __init__(self, keys: KeySource, ttl_s: int) -> None:
        self._keys = keys
        self.ttl_s = ttl_s
        self._verified: dict[str, tuple[TokenClaims, str | None, float]] = {}

    def issue(
        self, user_id: str, tenant_id: str, role: Role, session_id: str, token_version: int
    ) -> str:
        now = utcnow()
        key = self._keys.ring().active
        claims = {
            "sub": user_id,
            "tenantId": tenant_id,
            # Informational for clients: the server takes the role from the database.
            "role": role.value,
            "permissions": permissions_for(role),
            "sid": session_id,
            "ver": token_version,
            "iat": int(now.timestamp()),
            "exp": int((now + timedelta(seconds=self.ttl_s)).timestamp()),
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, key.secret, algorithm=ALGORITHM, headers={"kid": key.kid})

    def verify(self, token: str) -> TokenClaims:
        hit = self._verified.get(token)
        if hit is not None:
            claims, kid, exp = hit
            now = utcnow()
            key = self._keys.ring().find(kid)
            if key is not None and key.verifies_at(now, self.ttl_s) and now.timestamp() < exp:
                return claims
            # Expired, or its key retired: the full check below gives the reason.
            self._verified.pop(token, None)
        verified, kid, exp = self._verify(token)
        if len(self._verified) >= _VERIFIED_CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)), None)
        self._verified[token] = (verified, kid, exp)
        return verified

    def _verify(self, token: str) -> tuple[TokenClaims, str | None, float]:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError as exc:
            raise Unauthorized("invalid access token") from exc
        kid = kid if isinstance(kid, str) else None
        key = self._keys.ring().find(kid)
        if key is None or not key.verifies_at(utcnow(), self.ttl_s):
            raise Unauthorized("invalid access token")
        try:
            claims = jwt.decode(
                token,
                key.secret,
                algorithms=[ALGORITHM],
                options={"require": ["sub", "tenantId", "sid", "ver", "exp", "iat"]},
            )
            version = claims["ver"]
            if not isinstance(version, int) or isinstance(version, bool):
                raise ValueError("ver")
            # PyJWT has checked it is a number in the future.
            exp = float(claims["exp"])
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("access token expired") from exc
        except (jwt.InvalidTokenError, ValueError) as exc:
            raise Unauthorized("invalid access token") from exc
        verified = TokenClaims(
            user_id=str(claims["sub"]),
            tenant_id=str(claims["tenantId"]),
            session_id=str(claims["sid"]),
            token_version=version,
        )
        return verified, kid, exp


def new_opaque_token() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
