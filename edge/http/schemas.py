"""Request bodies of the kiosk API, validated with pydantic (400 with pydantic's errors)."""

import hashlib
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from contracts.orders import PaymentMethod
from edge.store.views import NewOrder, NewOrderLine

MAX_LINES = 20


class OrderLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(min_length=1, max_length=64)]
    quantity: Annotated[StrictInt, Field(ge=1, le=10)]


class CreateOrderRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    machine_id: Annotated[str, Field(min_length=1, max_length=64)]
    items: Annotated[list[OrderLineIn], Field(min_length=1, max_length=MAX_LINES)]
    payment_method: PaymentMethod
    customer_name: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    customer_phone: Annotated[str, Field(pattern=r"^\+[1-9]\d{7,14}$")] | None = None

    @field_validator("items")
    @classmethod
    def _distinct_items(cls, items: list[OrderLineIn]) -> list[OrderLineIn]:
        ids = [line.id for line in items]
        if len(set(ids)) != len(ids):
            # Merging could push a line past the per-item limit; asking for one line per item is
            # clearer for the kiosk.
            raise ValueError("each item id may appear only once; use quantity instead")
        return items

    def to_new_order(self) -> NewOrder:
        return NewOrder(
            machine_id=self.machine_id,
            lines=tuple(NewOrderLine(line.id, line.quantity) for line in self.items),
            payment_method=self.payment_method,
            customer_name=self.customer_name,
            customer_phone=self.customer_phone,
        )

    def fingerprint(self) -> str:
        """Hash of the validated request: what an Idempotency-Key replay must match."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9_.:-]{8,128}$"
