"""The cloud's dead letters as the API shows them (``/api/v1/sync/dead-letters``)."""

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from cloud.models.common import MAX_SAFE_INT, Input, Output


class DeadLettersQuery(Input):
    state: Literal["open", "resolved", "all"] = "open"
    site_id: Annotated[str, Field(max_length=64)] | None = None
    gateway_id: Annotated[str, Field(max_length=64)] | None = None
    limit: Annotated[int, Field(ge=1, le=200)] = 50
    offset: Annotated[int, Field(ge=0, le=MAX_SAFE_INT)] = 0


class DeadLetterOut(Output):
    id: str
    tenant_id: str
    site_id: str
    gateway_id: str
    event_id: str
    seq: int
    type: str
    payload: str = Field(description="the event as received, JSON text (clipped when too long)")
    payload_truncated: bool
    error_code: str
    error_message: str
    state: Literal["open", "resolved"]
    attempts: int
    first_seen_at: datetime
    last_seen_at: datetime
    resolved_at: datetime | None
