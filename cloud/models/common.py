"""Shared pieces of the API models: strictness and the error envelope (for OpenAPI)."""

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from contracts.openapi import ErrorBody, ErrorEnvelope

__all__ = ["EMAIL_MAX", "MAX_SAFE_INT", "ErrorBody", "ErrorEnvelope", "Input", "Output"]

# Ids, cursors and offsets: the largest integer every JSON reader keeps exactly; far below the
# 64-bit database columns, so a huge number is a 400 rather than a database error.
MAX_SAFE_INT = 2**53
# E-mail addresses are kept lower-cased, and lower-casing can lengthen a string ("\u0130" becomes
# two characters): the stored form is what must fit the columns and throttle keys.
EMAIL_MAX = 320


class Input(BaseModel):
    """Request bodies: unknown fields are refused, so typos do not pass silently. Strings are
    taken as sent (not stripped), so the lengths the OpenAPI document states are the ones
    checked."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # PostgreSQL text cannot hold NUL; refuse it here rather than fail in the database.
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("NUL characters are not allowed")
        return value


class Output(BaseModel):
    model_config = ConfigDict(extra="forbid")
