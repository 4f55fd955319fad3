"""Helpers for the cloud's money tests (webhooks, refunds, money sync events): pushed events, order
snapshots, signed webhook bodies as Razorpay sends them, and reading the money tables.

Used by tests/cloud/test_webhooks*.py, test_refunds*.py and test_sync_money_events.py."""

import hashlib
import hmac
import json
import secrets
import string
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import sqlalchemy as sa

from cloud.db import schema as t
from cloud.server import CloudServer

_ALNUM = string.ascii_letters + string.digits


def provider_id(prefix: str) -> str:
    """An id in Razorpay's shape (``pay_``, ``rfnd_``, ``qr_``, ``evt_`` + 14 characters)."""
    return prefix + "".join(secrets.choice(_ALNUM) for _ in range(14))


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def event(seq: int, type_: str, payload: dict[str, Any], event_id: str | None = None) -> dict:
    return {
        "seq": seq,
        "event_id": event_id or uuid.uuid4().hex,
        "type": type_,
        "occurred_at": now_iso(),
        "payload": payload,
    }


def snapshot(
    order_id: str,
    machine_id: str,
    *,
    version: int,
    status: str,
    method: str = "upi",
    payment_id: str | None = None,
    total: int = 2500,
    paid: int = 0,
    refund_amount: int = 0,
    credit_amount: int = 0,
) -> dict[str, Any]:
    """An order snapshot of one Cola (2500 paise) the way a gateway pushes it."""
    return {
        "id": order_id,
        "machine_id": machine_id,
        "status": status,
        "payment_method": method,
        "total_amount": total,
        "paid_amount": paid,
        "currency": "INR",
        "payment_id": payment_id,
        "refund_amount": refund_amount,
        "credit_amount": credit_amount,
        "items": [
            {
                "id": f"{order_id}-1",
                "catalog_item_id": "cat-1",
                "slot": "A1",
                "name": "Cola",
                "unit_price": total,
                "quantity": 1,
                "dispense_status": "pending",
            }
        ],
        "created_at": now_iso(),
        "updated_at": now_iso(),
        "version": version,
    }


def refund_request(
    refund_id: str,
    order_id: str,
    machine_id: str,
    payment_id: str,
    amount: int,
    *,
    reason: str = "undispensed",
    hold: bool = False,
) -> dict[str, Any]:
    return {
        "refund_id": refund_id,
        "order_id": order_id,
        "machine_id": machine_id,
        "payment_id": payment_id,
        "amount": amount,
        "currency": "INR",
        "reason": reason,
        "hold": hold,
    }


# --- webhooks -------------------------------------------------------------------------------


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_body(name: str, **entities: dict[str, Any]) -> bytes:
    """A Razorpay webhook event body carrying ``entities`` (kind -> entity)."""
    return json.dumps(
        {
            "entity": "event",
            "account_id": "acc_" + "x" * 14,
            "event": name,
            "contains": list(entities),
            "payload": {kind: {"entity": entity} for kind, entity in entities.items()},
            "created_at": int(datetime.now(UTC).timestamp()),
        }
    ).encode()


def payment_entity(
    pay_id: str,
    amount: int,
    *,
    notes: dict[str, Any] | None = None,
    status: str = "captured",
    currency: str = "INR",
) -> dict[str, Any]:
    return {
        "id": pay_id,
        "entity": "payment",
        "amount": amount,
        "currency": currency,
        "status": status,
        "method": "upi",
        "amount_refunded": 0,
        "captured": status == "captured",
        "vpa": "customer@okbank",
        "email": "customer@example.com",
        "contact": "+919999999999",
        "notes": notes or {},
        "created_at": int(datetime.now(UTC).timestamp()),
    }


def qr_entity(qr_id: str, amount: int, notes: dict[str, Any], status: str = "closed") -> dict:
    return {
        "id": qr_id,
        "entity": "qr_code",
        "type": "upi_qr",
        "usage": "single_use",
        "fixed_amount": True,
        "payment_amount": amount,
        "payments_amount_received": amount,
        "payments_count_received": 1,
        "status": status,
        "close_reason": "paid" if status == "closed" else None,
        "notes": notes,
    }


def refund_entity(
    rfnd_id: str, pay_id: str, amount: int, status: str, notes: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "id": rfnd_id,
        "entity": "refund",
        "amount": amount,
        "currency": "INR",
        "payment_id": pay_id,
        "notes": notes or {},
        "status": status,
        "created_at": int(datetime.now(UTC).timestamp()),
    }


async def post_webhook(
    session: aiohttp.ClientSession,
    cloud: CloudServer,
    tenant_id: str,
    body: bytes,
    *,
    secret: str | None,
    event_id: str | None = None,
    signature: str | None = None,
) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if signature is None and secret is not None:
        signature = sign(secret, body)
    if signature is not None:
        headers["X-Razorpay-Signature"] = signature
    if event_id is not None:
        headers["X-Razorpay-Event-Id"] = event_id
    url = f"{cloud.api_url}/api/v1/webhooks/razorpay/{tenant_id}"
    async with session.post(url, data=body, headers=headers) as resp:
        return resp.status, await resp.json()


# --- reading the money tables ---------------------------------------------------------------


async def rows(cloud: CloudServer, table: sa.Table, *where: Any) -> list[Any]:
    query = sa.select(table)
    for clause in where:
        query = query.where(clause)
    async with cloud.engine.connect() as conn:
        return list((await conn.execute(query)).all())


async def refund_row(cloud: CloudServer, refund_id: str) -> Any:
    found = await rows(cloud, t.refunds, t.refunds.c.id == refund_id)
    return found[0] if found else None


async def payment(cloud: CloudServer, payment_id: str) -> Any:
    [row] = await rows(cloud, t.payments, t.payments.c.id == payment_id)
    return row


async def channel_payloads(cloud: CloudServer, gateway_id: str, type_: str) -> list[dict]:
    found = await rows(
        cloud,
        t.channel_messages,
        t.channel_messages.c.gateway_id == gateway_id,
        t.channel_messages.c.type == type_,
    )
    return [dict(r.payload) for r in sorted(found, key=lambda r: (r.created_at, r.id))]


async def audit_rows(cloud: CloudServer, tenant_id: str, refund_id: str) -> list[Any]:
    found = await rows(
        cloud,
        t.operator_audit,
        t.operator_audit.c.tenant_id == tenant_id,
        t.operator_audit.c.target_id == refund_id,
    )
    return sorted(found, key=lambda r: r.created_at)


async def captured_sandbox_payment(
    gateway: Any, machine_id: str, cloud: CloudServer, poll: Any, amount: int = 2500
) -> tuple[str, str]:
    """A sandbox payment created through the gateway's sync API and captured by the cloud;
    returns (order_id, payment_id)."""
    """A sandbox payment for a new order, captured by the sandbox worker."""
    order_id = str(uuid.uuid4())
    reply = await gateway.call(
        "POST",
        "/sync/v1/payments",
        {
            "order_id": order_id,
            "machine_id": machine_id,
            "amount": amount,
            "currency": "INR",
            "method": "sandbox",
            "idempotency_key": f"idem-{uuid.uuid4().hex}",
        },
    )
    assert reply.status == 201, reply.body
    payment_id = reply.data["payment_id"]

    async def captured() -> bool:
        return (await payment(cloud, payment_id)).status == "captured"

    await poll(captured)
    return order_id, payment_id
