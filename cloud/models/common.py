"""Shared pieces of the API models: strictness and the error envelope (for OpenAPI)."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

# Ids, cursors and offsets: the largest integer every JSON reader keeps exactly; far below the
# 64-bit database columns, so a huge number is a 400 rather than a database error.
MAX_SAFE_INT = 2**53


class Input(BaseModel):
    """Request bodies: unknown fields are refused, so typos do not pass silently."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # PostgreSQL text cannot hold NUL; refuse it here rather than fail in the database.
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("NUL characters are not allowed")
        return value


class Output(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(Output):
    code: str
    message: str
    details: Any = None
    timestamp: datetime
    requestId: str


class ErrorEnvelope(Output):
    success: Literal[False]
    error: ErrorBody
