from datetime import datetime
from typing import Annotated

from pydantic import ConfigDict, Field, StrictBool, field_validator, model_validator

from cloud.auth.permissions import Role
from cloud.models.common import EMAIL_MAX, Input, Output


class UserCreate(Input):
    email: Annotated[str, Field(min_length=3, max_length=EMAIL_MAX, pattern=r"^[^@\s]+@[^@\s]+$")]
    password: Annotated[str, Field(min_length=8, max_length=1024)]
    role: Role

    @field_validator("email", mode="after")
    @classmethod
    def _fits_lower_cased(cls, value: str) -> str:
        if len(value.lower()) > EMAIL_MAX:
            raise ValueError(f"the e-mail must have at most {EMAIL_MAX} characters lower-cased")
        return value


class UserUpdate(Input):
    # The document states "role, active or both" too (see _something), so a client can tell.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {"required": ["role"], "properties": {"role": {"not": {"type": "null"}}}},
                {"required": ["active"], "properties": {"active": {"not": {"type": "null"}}}},
            ]
        },
    )

    role: Role | None = None
    active: StrictBool | None = None

    @model_validator(mode="after")
    def _something(self) -> "UserUpdate":
        if self.role is None and self.active is None:
            raise ValueError("give role, active or both")
        return self


class UserOut(Output):
    id: str
    email: str
    role: Role
    tenant_id: str
    active: bool
    created_at: datetime


class UserDeleted(Output):
    id: str
    deleted: bool


class PasswordReset(Output):
    """Shown once: hand it to the user out of band. It opens only change-password."""

    user_id: str
    temporary_password: str
    expires_at: datetime
