"""Races that retries and several cloud processes produce: each effect still happens once."""

import asyncio
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa

from cloud.db import schema as t
from cloud.server import CloudServer


def _event(seq: int, machine_id: str) -> dict:
    return {
        "seq": seq,
        "event_id": uuid.uuid4().hex,
        "type": "cash.credit",
        "occurred_at": datetime.now(UTC).isoformat(),
        "payload": {
            "credit_id": uuid.uuid4().hex,
            "machine_id": machine_id,
            "amount": 1000,
            "currency": "INR",
        },
    }


async def _count(engine, table, *where) -> int:
    async with engine.connect() as conn:
        query = sa.select(sa.func.count()).select_from(table)
        for clause in where:
            query = query.where(clause)
        return int(await conn.scalar(query) or 0)


async def test_concurrent_replays_store_once(tenant, enroll, cloud):
    site = await tenant.site()
    mid = (await tenant.machine(site["id"]))["machine"]["id"]
    gateway = await enroll(site["id"])
    batch = [_event(seq, mid) for seq in range(1, 21)]
    replies = await asyncio.gather(*(gateway.push(batch) for _ in range(5)))
    assert all(r.status == 200 for r in replies), [r.body for r in replies]
    assert sum(r.data["accepted"] for r in replies) == 20
    assert {r.data["ack_seq"] for r in replies} == {20}
    assert await _count(cloud.engine, t.cash_credits, t.cash_credits.c.machine_id == mid) == 20


async def test_concurrent_payment_creates_share_one_payment(tenant, enroll, cloud):
    site = await tenant.site()
    mid = (await tenant.machine(site["id"]))["machine"]["id"]
    gateway = await enroll(site["id"])
    body = {
        "order_id": "o-race",
        "machine_id": mid,
        "amount": 500,
        "currency": "INR",
        "method": "sandbox",
        "idempotency_key": f"idem-{uuid.uuid4().hex}",
    }
    replies = await asyncio.gather(
        *(gateway.call("POST", "/sync/v1/payments", body) for _ in range(5))
    )
    assert all(r.status == 201 for r in replies), [r.body for r in replies]
    assert len({r.data["payment_id"] for r in replies}) == 1
    assert await _count(cloud.engine, t.payments, t.payments.c.order_id == "o-race") == 1


async def test_two_cloud_processes_capture_once(settings, tenant, enroll, cloud, poll):
    site = await tenant.site()
    mid = (await tenant.machine(site["id"]))["machine"]["id"]
    gateway = await enroll(site["id"])
    async with CloudServer(settings) as twin:
        assert twin.ca_pem == cloud.ca_pem  # same data dir, same CA
        orders = [f"o-twin-{n}" for n in range(6)]
        for order_id in orders:
            reply = await gateway.call(
                "POST",
                "/sync/v1/payments",
                {
                    "order_id": order_id,
                    "machine_id": mid,
                    "amount": 700,
                    "currency": "INR",
                    "method": "sandbox",
                    "idempotency_key": f"idem-{uuid.uuid4().hex}",
                },
            )
            assert reply.status == 201

        async def all_captured() -> bool:
            captured = await _count(
                cloud.engine,
                t.payments,
                t.payments.c.order_id.in_(orders),
                t.payments.c.status == "captured",
            )
            return captured == len(orders)

        await poll(all_captured)
        updates = await _count(
            twin.engine,
            t.channel_messages,
            t.channel_messages.c.gateway_id == gateway.id,
            t.channel_messages.c.type == "payment.update",
        )
        assert updates == len(orders)
