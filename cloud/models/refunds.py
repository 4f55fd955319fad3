"""Refunds and provider webhooks as the public API shows them."""

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StrictInt, field_validator

from cloud.models.common import MAX_SAFE_INT, Input, Output
from contracts.numbers import QUERY_INTEGER
from contracts.orders import RefundStatus


class RefundsQuery(Input):
    order_id: Annotated[str, Field(max_length=64)] | None = None
    status: RefundStatus | None = None
    limit: Annotated[StrictInt, Field(ge=1, le=200), QUERY_INTEGER] = 50
    offset: Annotated[StrictInt, Field(ge=0, le=MAX_SAFE_INT), QUERY_INTEGER] = 0


class RefundBrief(Output):
    """A refund as an order shows it."""

    id: str
    amount: int
    currency: str
    reason: str
    status: RefundStatus
    provider_refund_id: str | None
    created_at: datetime
    refunded_at: datetime | None


class RefundOut(RefundBrief):
    tenant_id: str
    site_id: str | None
    machine_id: str | None
    order_id: str | None
    payment_id: str | None
    provider: str
    provider_payment_id: str | None
    source: Literal["gateway", "cloud"] = Field(
        description="who decided it: the gateway (units not dispensed) or the cloud (a payment "
        "on an ended order, a second or wrong-amount payment)"
    )
    attempts: int = Field(description="failed tries since it was last (re)started")
    next_attempt_at: datetime | None
    last_error: str | None
    note: str | None = Field(description="the operator's note when resolved by hand")
    resolved_by: str | None
    updated_at: datetime


class RefundResolve(Input):
    outcome: Literal["refunded_outside", "not_owed"] = Field(
        description="refunded_outside: the customer was paid back another way (-> refunded); "
        "not_owed: nothing is owed, e.g. the item did come out (-> voided)"
    )
    note: Annotated[str, Field(min_length=3, max_length=1000)]

    @field_validator("note")
    @classmethod
    def _says_something(cls, value: str) -> str:
        if len(value.strip()) < 3:
            raise ValueError("the note must say what was done (at least 3 characters)")
        return value


class WebhookAck(Output):
    event_id: str
    outcome: str = Field(
        description="what was done: captured, duplicate (already received), ignored, ..."
    )
    duplicate: bool
