from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StrictInt

from cloud.models.common import MAX_SAFE_INT, Input, Output
from cloud.models.refunds import RefundBrief
from contracts.numbers import QUERY_INTEGER
from contracts.orders import OrderStatus


class OrdersQuery(Input):
    machine_id: Annotated[str, Field(max_length=64)] | None = None
    status: OrderStatus | None = None
    limit: Annotated[StrictInt, Field(ge=1, le=200), QUERY_INTEGER] = 50
    offset: Annotated[StrictInt, Field(ge=0, le=MAX_SAFE_INT), QUERY_INTEGER] = 0


class DispenseOut(Output):
    cmd_id: str
    result: Literal["ok", "failed", "unknown"]
    reason: str | None
    device_ts: int | None


class OrderItemOut(Output):
    id: str
    catalog_item_id: str
    slot: str
    name: str
    unit_price: int
    quantity: int
    dispensed: int
    failed: int
    unknown: int
    dispense_status: str
    dispenses: list[DispenseOut]


class OrderOut(Output):
    id: str
    tenant_id: str
    site_id: str
    machine_id: str
    status: OrderStatus
    payment_method: str
    total_amount: int
    paid_amount: int
    currency: str
    payment_id: str | None
    # Electronic money refunded (or being refunded) and cash returned to the machine credit
    # because units did not come out, as the gateway decided them.
    refund_amount: int
    credit_amount: int
    customer_name: str | None
    customer_phone: str | None
    version: int
    created_at: datetime
    updated_at: datetime
    synced_at: datetime
    refunds: list[RefundBrief] = []


class OrderDetail(OrderOut):
    items: list[OrderItemOut]


class PaymentsQuery(Input):
    order_id: Annotated[str, Field(max_length=64)] | None = None
    limit: Annotated[StrictInt, Field(ge=1, le=200), QUERY_INTEGER] = 50
    offset: Annotated[StrictInt, Field(ge=0, le=MAX_SAFE_INT), QUERY_INTEGER] = 0


class PaymentOut(Output):
    id: str
    order_id: str
    machine_id: str
    provider: str
    status: str
    amount: int
    currency: str
    created_at: datetime
    captured_at: datetime | None
