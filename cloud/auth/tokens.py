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


class AccessTokens:
    def __init__(self, keys: KeySource, ttl_s: int) -> None:
        self._keys = keys
        self.ttl_s = ttl_s

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
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError as exc:
            raise Unauthorized("invalid access token") from exc
        key = self._keys.ring().find(kid if isinstance(kid, str) else None)
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
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("access token expired") from exc
        except (jwt.InvalidTokenError, ValueError) as exc:
            raise Unauthorized("invalid access token") from exc
        return TokenClaims(
            user_id=str(claims["sub"]),
            tenant_id=str(claims["tenantId"]),
            session_id=str(claims["sid"]),
            token_version=version,
        )


def new_opaque_token() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
