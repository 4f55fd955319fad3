"""Revoking a gateway: tenant-scoped, its mTLS calls get 401 and its open channel is closed."""

import asyncio
import uuid

import aiohttp
from test_sync_push import event, order_payload

from cloud.db import schema as t


async def test_revoke_closes_the_channel_and_refuses_the_certificate(tenant, make_tenant, enroll):
    site = await tenant.site()
    mid = (await tenant.machine(site["id"]))["machine"]["id"]
    gateway = await enroll(site["id"])
    other = await make_tenant()
    assert (await other.admin.call("POST", f"/api/v1/gateways/{gateway.id}/revoke")).status == 404
    missing = await tenant.admin.call("POST", f"/api/v1/gateways/{uuid.uuid4()}/revoke")
    assert missing.status == 404
    operator = await tenant.user("operator")
    assert (await operator.call("POST", f"/api/v1/gateways/{gateway.id}/revoke")).status == 403
    assert (await gateway.pull(0)).status == 200

    async with gateway.session.ws_connect(gateway.sync_url + "/sync/v1/channel") as ws:
        revoked = await tenant.admin.call("POST", f"/api/v1/gateways/{gateway.id}/revoke")
        assert revoked.status == 200, revoked.body
        assert revoked.data["id"] == gateway.id and revoked.data["status"] == "revoked"
        async with asyncio.timeout(10):
            while True:
                msg = await ws.receive()
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    break
        assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION

    pulled = await gateway.pull(0)
    assert pulled.status == 401
    pushed = await gateway.push(
        [event(1, "order.snapshot", order_payload(str(uuid.uuid4()), mid, version=1))]
    )
    assert pushed.status == 401
    listed = await tenant.admin.call("GET", "/api/v1/gateways")
    assert [g["status"] for g in listed.data if g["id"] == gateway.id] == ["revoked"]
    async with gateway.session.get(gateway.sync_url + "/sync/v1/channel") as resp:
        assert resp.status == 401


async def test_revoked_elsewhere_is_seen_on_the_poll(tenant, enroll, cloud):
    """Another cloud process revoking (no in-process wake-up): the sender's poll notices."""
    site = await tenant.site()
    gateway = await enroll(site["id"])
    async with gateway.session.ws_connect(gateway.sync_url + "/sync/v1/channel") as ws:
        async with cloud.engine.begin() as conn:
            await conn.execute(
                t.gateways.update().where(t.gateways.c.id == gateway.id).values(status="revoked")
            )
        async with asyncio.timeout(10):
            while True:
                msg = await ws.receive()
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    break
        assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION
