"""Orders mirrored from gateways (with their refunds), and payments, scoped to the caller's
tenant."""

from collections.abc import Collection
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.auth.permissions import Permission
from cloud.db import schema as t
from cloud.db import sealed
from cloud.db.rows import row_dict
from cloud.errors import NotFound
from cloud.http.registry import Api, Call
from cloud.models.orders import (
    OrderDetail,
    OrderOut,
    OrdersQuery,
    PaymentOut,
    PaymentsQuery,
)
from cloud.models.refunds import RefundBrief

api = Api("/api/v1")
_ORDER_FIELDS = [f for f in OrderOut.model_fields if f != "refunds"]
_REFUND_COLUMNS = [t.refunds.c.order_id, *(t.refunds.c[f] for f in RefundBrief.model_fields)]


async def _refunds(
    conn: AsyncConnection, tenant_id: str, order_ids: Collection[str]
) -> dict[str, list[dict[str, Any]]]:
    """The orders' refunds, oldest first, by order id."""
    by_order: dict[str, list[dict[str, Any]]] = {}
    if not order_ids:
        return by_order
    rows = await conn.execute(
        sa.select(*_REFUND_COLUMNS)
        .where(t.refunds.c.tenant_id == tenant_id, t.refunds.c.order_id.in_(list(order_ids)))
        .order_by(t.refunds.c.created_at, t.refunds.c.id)
    )
    for row in rows:
        values = row_dict(row)
        by_order.setdefault(values.pop("order_id"), []).append(values)
    return by_order


@api.route(
    "GET",
    "/orders",
    summary="Orders of the caller's tenant",
    tag="orders",
    query=OrdersQuery,
    response=OrderOut,
    many=True,
    permission=Permission.ORDERS_READ,
    errors=(),
)
async def list_orders(call: Call) -> list[OrderOut]:
    q = call.query(OrdersQuery)
    query = sa.select(*[t.orders.c[f] for f in _ORDER_FIELDS]).where(
        t.orders.c.tenant_id == call.principal.tenant_id
    )
    if q.machine_id is not None:
        query = query.where(t.orders.c.machine_id == q.machine_id)
    if q.status is not None:
        query = query.where(t.orders.c.status == q.status.value)
    query = (
        query.order_by(t.orders.c.created_at.desc(), t.orders.c.id).limit(q.limit).offset(q.offset)
    )
    tenant_id = call.principal.tenant_id
    async with call.ctx.engine.connect() as conn:
        rows = [sealed.open_order_row(conn, row_dict(r)) for r in await conn.execute(query)]
        refunds = await _refunds(conn, tenant_id, [r["id"] for r in rows])
    return [OrderOut.model_validate(r | {"refunds": refunds.get(r["id"], [])}) for r in rows]


@api.route(
    "GET",
    "/orders/{order_id}",
    summary="One order with its items and dispense results",
    tag="orders",
    response=OrderDetail,
    permission=Permission.ORDERS_READ,
    errors=(),
)
async def get_order(call: Call) -> OrderDetail:
    order_id = call.path("order_id")
    async with call.ctx.engine.connect() as conn:
        order = (
            await conn.execute(
                sa.select(*[t.orders.c[f] for f in _ORDER_FIELDS]).where(
                    t.orders.c.id == order_id, t.orders.c.tenant_id == call.principal.tenant_id
                )
            )
        ).first()
        if order is None:
            raise NotFound(f"order {order_id} not found")
        items = (
            await conn.execute(
                sa.select(t.order_items)
                .where(t.order_items.c.order_id == order_id)
                .order_by(t.order_items.c.slot, t.order_items.c.id)
            )
        ).all()
        dispenses = (
            await conn.execute(
                sa.select(t.dispense_records)
                .where(
                    t.dispense_records.c.order_id == order_id,
                    t.dispense_records.c.tenant_id == call.principal.tenant_id,
                )
                .order_by(t.dispense_records.c.received_at)
            )
        ).all()
        refunds = await _refunds(conn, call.principal.tenant_id, [order_id])
    by_item: dict[str, list[dict[str, object]]] = {}
    for d in dispenses:
        by_item.setdefault(d.item_id, []).append(
            {"cmd_id": d.cmd_id, "result": d.result, "reason": d.reason, "device_ts": d.device_ts}
        )
    return OrderDetail.model_validate(
        sealed.open_order_row(conn, row_dict(order))
        | {
            "items": [
                {k: v for k, v in row_dict(i).items() if k != "order_id"}
                | {"dispenses": by_item.get(i.id, [])}
                for i in items
            ],
            "refunds": refunds.get(order_id, []),
        }
    )


@api.route(
    "GET",
    "/payments",
    summary="Payments of the caller's tenant",
    tag="payments",
    query=PaymentsQuery,
    response=PaymentOut,
    many=True,
    permission=Permission.PAYMENTS_READ,
    errors=(),
)
async def list_payments(call: Call) -> list[PaymentOut]:
    q = call.query(PaymentsQuery)
    query = sa.select(*[t.payments.c[f] for f in PaymentOut.model_fields]).where(
        t.payments.c.tenant_id == call.principal.tenant_id
    )
    if q.order_id is not None:
        query = query.where(t.payments.c.order_id == q.order_id)
    query = query.order_by(t.payments.c.created_at.desc()).limit(q.limit).offset(q.offset)
    async with call.ctx.engine.connect() as conn:
        return [PaymentOut.model_validate(row_dict(r)) for r in await conn.execute(query)]
