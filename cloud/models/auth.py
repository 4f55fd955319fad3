from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, field_validator

from cloud.models.common import EMAIL_MAX, Input, Output


class LoginRequest(Input):
    email: Annotated[str, Field(min_length=3, max_length=EMAIL_MAX)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]
    # Only needed when one e-mail and password open accounts in several tenants.
    tenant_id: Annotated[str | None, Field(default=None, min_length=1, max_length=36)] = None

    @field_validator("email", mode="after")
    @classmethod
    def _lower_cased(cls, value: str) -> str:
        # The form accounts are kept in. One that grows past EMAIL_MAX names no account (creation
        # refuses those), so it is clipped rather than refused: the login answers 401 like any
        # unknown address, and the throttle keys and audit row stay within their columns.
        return value.lower()[:EMAIL_MAX]


class RefreshRequest(Input):
    refresh_token: Annotated[str, Field(min_length=1, max_length=512)]


class TokenPair(Output):
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int
    # True after an admin password reset: the token only opens change-password (and profile,
    # logout) until the user sets a password of their own.
    password_change_required: bool = False


class LogoutResult(Output):
    revoked: bool


class ChangePasswordRequest(Input):
    current_password: Annotated[str, Field(min_length=1, max_length=1024)]
    new_password: Annotated[str, Field(min_length=8, max_length=1024)]


class PasswordChanged(Output):
    changed: bool
    other_sessions_ended: bool


class Profile(Output):
    id: str
    email: str
    role: str
    tenant_id: str
    tenant_name: str
    permissions: list[str]
    password_change_required: bool = False


class LoginAuditQuery(Input):
    outcome: Literal["success", "failure", "refused"] | None = None
    limit: Annotated[int, Field(ge=1, le=500)] = 100
    offset: Annotated[int, Field(ge=0, le=2**53)] = 0


class LoginAuditOut(Output):
    id: str
    user_id: str | None
    email: str
    client_address: str
    outcome: Literal["success", "failure", "refused"]
    reason: str
    created_at: datetime
