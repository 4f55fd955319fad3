"""Sandbox payments: idempotent create, capture after the delay, delivery on the push channel."""

import asyncio
import json
import uuid

import aiohttp
import sqlalchemy as sa

from cloud.db import schema as t
from cloud.server import CloudServer
from contracts.sync import ChannelMessage, PaymentIntent, PaymentUpdate


def payment_body(machine_id, order_id, amount=3505, key=None):
    return {
        "order_id": order_id,
        "machine_id": machine_id,
        "amount": amount,
        "currency": "INR",
        "method": "sandbox",
        "idempotency_key": key or f"idem-{uuid.uuid4().hex}",
    }


async def next_message(
    ws: aiohttp.ClientWebSocketResponse, limit_s: float = 10.0
) -> ChannelMessage:
    async with asyncio.timeout(limit_s):
        msg = await ws.receive()
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return ChannelMessage.model_validate_json(msg.data)


async def next_of_type(ws, type_: str) -> ChannelMessage:
    while True:
        message = await next_message(ws)
        if message.type == type_:
            return message


async def acked(cloud, message_id) -> bool:
    async with cloud.engine.connect() as conn:
        value = await conn.scalar(
            sa.select(t.channel_messages.c.acked_at).where(t.channel_messages.c.id == message_id)
        )
    return value is not None


async def test_sandbox_payment_reaches_the_channel(tenant, enroll, cloud, poll):
    site = await tenant.site()
    mid = (await tenant.machine(site["id"]))["machine"]["id"]
    gateway = await enroll(site["id"])
    order_id = str(uuid.uuid4())
    body = payment_body(mid, order_id)

    created = await gateway.call("POST", "/sync/v1/payments", body)
    assert created.status == 201, created.body
    intent = PaymentIntent.model_validate(created.data)
    assert intent.status == "created" and intent.provider == "sandbox"
    assert intent.qr_payload == f"upi://pay?pa=sandbox@vending&am=35.05&tr={intent.payment_id}"
    same = await gateway.call("POST", "/sync/v1/payments", body)
    assert same.data["payment_id"] == intent.payment_id
    clash = await gateway.call("POST", "/sync/v1/payments", body | {"amount": 100})
    assert clash.status == 409

    channel_url = gateway.sync_url + "/sync/v1/channel"
    async with gateway.session.ws_connect(channel_url) as ws:
        message = await next_of_type(ws, "payment.update")
        update = PaymentUpdate.model_validate(message.payload)
        assert (update.payment_id, update.order_id, update.machine_id) == (
            intent.payment_id,
            order_id,
            mid,
        )
        assert (update.status, update.amount, update.currency) == ("captured", 3505, "INR")
        # Not acked: it comes again on the next connection.

    async with gateway.session.ws_connect(channel_url) as ws:
        again = await next_of_type(ws, "payment.update")
        assert again.id == message.id
        await ws.send_str(json.dumps({"type": "ack", "id": again.id}))
        await poll(lambda: acked(cloud, again.id))

    payments = await tenant.admin.call("GET", "/api/v1/payments", params={"order_id": order_id})
    assert [(p["id"], p["status"]) for p in payments.data] == [(intent.payment_id, "captured")]

    async with gateway.session.ws_connect(channel_url) as ws:
        # A change to the site's machine queues state.changed; it must be the first thing sent,
        # since the acked payment.update is not sent again.
        put = await tenant.admin.call("PUT", f"/api/v1/machines/{mid}/config", {"config": {"a": 1}})
        assert put.status == 200
        first = await next_message(ws)
        assert first.type == "state.changed"
        await ws.send_str(json.dumps({"type": "ack", "id": first.id}))
        await poll(lambda: acked(cloud, first.id))


async def test_payment_for_foreign_machine_is_refused(tenant, enroll):
    site = await tenant.site()
    await tenant.machine(site["id"])
    elsewhere = await tenant.site("Elsewhere")
    far = (await tenant.machine(elsewhere["id"], name="Far"))["machine"]["id"]
    gateway = await enroll(site["id"])
    reply = await gateway.call("POST", "/sync/v1/payments", payment_body(far, "o-1"))
    assert reply.status == 409
    floaty = await gateway.call("POST", "/sync/v1/payments", payment_body(far, "o-1", amount=1.5))
    assert floaty.status == 400


async def test_capture_survives_a_restart(settings, tenant, enroll, cloud, poll):
    site = await tenant.site()
    mid = (await tenant.machine(site["id"]))["machine"]["id"]
    gateway = await enroll(site["id"])
    await cloud.stop()

    slow = settings.model_copy(update={"sandbox_approve_delay_s": 1.0})
    async with CloudServer(slow) as first:
        gateway.sync_url = first.sync_url
        created = await gateway.call("POST", "/sync/v1/payments", payment_body(mid, "o-restart"))
        assert created.status == 201
    async with CloudServer(settings) as second:
        async with second.engine.connect() as conn:
            status = await conn.scalar(
                sa.select(t.payments.c.status).where(t.payments.c.order_id == "o-restart")
            )
        assert status == "created"  # stopped before the delay ran out
        gateway.sync_url = second.sync_url
        async with gateway.session.ws_connect(second.sync_url + "/sync/v1/channel") as ws:
            message = await next_of_type(ws, "payment.update")
            assert message.payload["order_id"] == "o-restart"
            assert message.payload["status"] == "captured"


async def test_one_pending_state_changed_per_gateway(tenant, enroll, cloud):
    site = await tenant.site()
    mid = (await tenant.machine(site["id"]))["machine"]["id"]
    gateway = await enroll(site["id"])
    for n in range(3):
        put = await tenant.admin.call("PUT", f"/api/v1/machines/{mid}/config", {"config": {"n": n}})
        assert put.status == 200
    async with cloud.engine.connect() as conn:
        pending = (
            await conn.execute(
                sa.select(t.channel_messages.c.type).where(
                    t.channel_messages.c.gateway_id == gateway.id,
                    t.channel_messages.c.acked_at.is_(None),
                )
            )
        ).all()
    assert [row.type for row in pending] == ["state.changed"]
    async with gateway.session.ws_connect(gateway.sync_url + "/sync/v1/channel") as ws:
        message = await next_message(ws)
        assert message.type == "state.changed" and message.payload == {}
