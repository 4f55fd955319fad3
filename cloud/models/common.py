"""Shared pieces of the API models: strictness and the error envelope (for OpenAPI)."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class Input(BaseModel):
    """Request bodies: unknown fields are refused, so typos do not pass silently."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


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
