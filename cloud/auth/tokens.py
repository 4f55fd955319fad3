"""Access tokens (JWT, HS256) and opaque refresh tokens (stored only as SHA-256)."""

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

import jwt

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


class AccessTokens:
    def __init__(self, secret: str, ttl_s: int) -> None:
        self._secret = secret
        self.ttl_s = ttl_s

    def issue(self, user_id: str, tenant_id: str, role: Role) -> str:
        now = utcnow()
        claims = {
            "sub": user_id,
            "tenantId": tenant_id,
            "role": role.value,
            "permissions": permissions_for(role),
            "iat": int(now.timestamp()),
            "exp": int((now + timedelta(seconds=self.ttl_s)).timestamp()),
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require": ["sub", "tenantId", "role", "exp", "iat"]},
            )
            role = Role(claims["role"])
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("access token expired") from exc
        except (jwt.InvalidTokenError, ValueError) as exc:
            raise Unauthorized("invalid access token") from exc
        # Permissions come from the role map, not the token, so a narrowed role takes effect.
        return Principal(
            user_id=str(claims["sub"]),
            tenant_id=str(claims["tenantId"]),
            role=role,
            permissions=frozenset(permissions_for(role)),
        )


def new_opaque_token() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
