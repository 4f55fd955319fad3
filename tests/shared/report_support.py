"""Test support for the money reports: orders and cash pushed through the real sync path (an
enrolled gateway), and the provider-side rows (payments, provider payments, refunds) written
straight to the database where the real path cannot make them, e.g. a mismatch on purpose."""

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cloud_fixtures import GatewayClient

from cloud.db import schema as t
from cloud.server import CloudServer


def at(day: str, hhmm: str = "12:00") -> datetime:
    return datetime.fromisoformat(f"{day}T{hhmm}:00+00:00")


def item(
    slot: str, price: int, qty: int = 1, *, ok: int | None = None, failed: int = 0, unknown: int = 0
) -> dict[str, Any]:
    dispensed = qty - failed - unknown if ok is None else ok
    if dispensed == qty:
        status = "dispensed"
    elif dispensed == 0:
        status = "failed" if unknown == 0 and failed else "unknown" if unknown else "pending"
    else:
        status = "partial"
    return {
        "slot": slot,
        "unit_price": price,
        "quantity": qty,
        "dispensed": dispensed,
        "failed": failed,
        "unknown": unknown,
        "dispense_status": status,
    }


def snapshot(
    order_id: str,
    machine_id: str,
    created: datetime,
    *,
    method: str = "cash",
    status: str = "completed",
    items: list[dict[str, Any]],
    paid: int | None = None,
    payment_id: str | None = None,
    refund_amount: int = 0,
    credit_amount: int = 0,
    version: int = 1,
) -> dict[str, Any]:
    total = sum(i["unit_price"] * i["quantity"] for i in items)
    return {
        "id": order_id,
        "machine_id": machine_id,
        "status": status,
        "payment_method": method,
        "total_amount": total,
        "paid_amount": total if paid is None else paid,
        "currency": "INR",
        "payment_id": payment_id,
        "refund_amount": refund_amount,
        "credit_amount": credit_amount,
        "items": [
            {"id": f"{order_id}-{n}", "catalog_item_id": f"cat-{i['slot']}", "name": "Thing"} | i
            for n, i in enumerate(items)
        ],
        "created_at": created.isoformat(),
        "updated_at": created.isoformat(),
        "version": version,
    }


@dataclass
class Pusher:
    """A gateway's outbox: events in sequence, each one required to be stored."""

    gateway: GatewayClient
    seq: int = 0
    sent: list[str] = field(default_factory=list)

    async def push(
        self, type_: str, payload: dict[str, Any], *, when: datetime, event_id: str | None = None
    ) -> None:
        self.seq += 1
        event_id = event_id or uuid.uuid4().hex
        reply = await self.gateway.push(
            [
                {
                    "seq": self.seq,
                    "event_id": event_id,
                    "type": type_,
                    "occurred_at": when.isoformat(),
                    "payload": payload,
                }
            ]
        )
        assert reply.status == 200, reply.body
        assert reply.data["accepted"] == 1 and not reply.data.get("rejected"), reply.body
        self.sent.append(event_id)

    async def order(self, payload: dict[str, Any]) -> None:
        await self.push(
            "order.snapshot", payload, when=datetime.fromisoformat(payload["updated_at"])
        )

    async def cash(
        self, machine_id: str, amount: int, when: datetime, order_id: str | None = None
    ) -> None:
        credit_id = f"cc-{uuid.uuid4().hex}"
        await self.push(
            "cash.credit",
            {
                "credit_id": credit_id,
                "machine_id": machine_id,
                "amount": amount,
                "currency": "INR",
                "order_id": order_id,
            },
            when=when,
            event_id=credit_id,
        )


@dataclass
class Ledger:
    """Provider-side rows of one tenant, written directly."""

    cloud: CloudServer
    tenant_id: str
    site_id: str
    gateway_id: str

    async def payment(
        self,
        order_id: str,
        machine_id: str,
        amount: int,
        when: datetime | None,
        *,
        provider: str = "razorpay",
        status: str = "captured",
        provider_payment_id: str | None = None,
        qr_code_id: str | None = None,
    ) -> str:
        payment_id = str(uuid.uuid4())
        created = when or datetime.now(UTC)
        async with self.cloud.engine.begin() as conn:
            await conn.execute(
                t.payments.insert().values(
                    id=payment_id,
                    tenant_id=self.tenant_id,
                    site_id=self.site_id,
                    machine_id=machine_id,
                    gateway_id=self.gateway_id,
                    order_id=order_id,
                    provider=provider,
                    provider_ref=qr_code_id,
                    status=status,
                    amount=amount,
                    currency="INR",
                    idempotency_key=f"idem-{payment_id}",
                    captured_at=when if status == "captured" else None,
                    created_at=created,
                    updated_at=created,
                    provider_payment_id=provider_payment_id,
                )
            )
        return payment_id

    async def provider_payment(
        self,
        amount: int,
        when: datetime,
        *,
        payment_id: str | None = None,
        order_id: str | None = None,
        qr_code_id: str | None = None,
        status: str = "captured",
        amount_refunded: int = 0,
        pp_id: str | None = None,
    ) -> str:
        pp_id = pp_id or f"pay_{uuid.uuid4().hex[:14]}"
        async with self.cloud.engine.begin() as conn:
            await conn.execute(
                t.provider_payments.insert().values(
                    id=pp_id,
                    tenant_id=self.tenant_id,
                    provider="razorpay",
                    payment_id=payment_id,
                    qr_code_id=qr_code_id,
                    order_id=order_id,
                    amount=amount,
                    currency="INR",
                    status=status,
                    method="upi",
                    amount_refunded=amount_refunded,
                    source="webhook",
                    captured_at=when,
                    first_seen_at=when,
                    updated_at=when,
                )
            )
        return pp_id

    async def upi_paid(
        self, order_id: str, machine_id: str, amount: int, when: datetime
    ) -> tuple[str, str]:
        """A QR payment of ``amount`` for the order, captured by the provider: (payment id,
        provider payment id)."""
        qr = f"qr_{uuid.uuid4().hex[:14]}"
        pp_id = f"pay_{uuid.uuid4().hex[:14]}"
        payment_id = await self.payment(
            order_id, machine_id, amount, when, provider_payment_id=pp_id, qr_code_id=qr
        )
        await self.provider_payment(
            amount, when, payment_id=payment_id, order_id=order_id, qr_code_id=qr, pp_id=pp_id
        )
        return payment_id, pp_id

    async def refund(
        self,
        refund_id: str,
        amount: int,
        when: datetime,
        *,
        status: str,
        reason: str = "undispensed",
        order_id: str | None = None,
        payment_id: str | None = None,
        provider_payment_id: str | None = None,
        machine_id: str | None = None,
        provider: str = "razorpay",
    ) -> str:
        async with self.cloud.engine.begin() as conn:
            # The cloud may have decided this refund itself already (same deterministic id):
            # then it is given the state the test wants.
            await conn.execute(t.refunds.delete().where(t.refunds.c.id == refund_id))
            await conn.execute(
                t.refunds.insert().values(
                    id=refund_id,
                    tenant_id=self.tenant_id,
                    site_id=self.site_id,
                    machine_id=machine_id,
                    order_id=order_id,
                    payment_id=payment_id,
                    provider=provider,
                    provider_payment_id=provider_payment_id,
                    amount=amount,
                    currency="INR",
                    reason=reason,
                    source="gateway",
                    status=status,
                    attempts=1,
                    created_at=when,
                    updated_at=when,
                    refunded_at=when if status == "refunded" else None,
                )
            )
        return refund_id

    async def set_order(self, order_id: str, **values: Any) -> None:
        """Order columns the sync path stores only once the money events are applied there."""
        async with self.cloud.engine.begin() as conn:
            await conn.execute(t.orders.update().where(t.orders.c.id == order_id).values(**values))
