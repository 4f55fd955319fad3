"""The cloud attacker against the dead-letter API: a revoked (stolen) gateway's refused events
must not be applied afterwards, and a storm of retries of one letter, alone or racing the
gateway's own resend, applies the event exactly once and never answers 500."""

# ruff: noqa: F811 - pytest fixtures are imported by name and then taken as parameters
import asyncio
import json
from typing import Any

import sqlalchemy as sa
from sec_accounts_support import (  # noqa: F401
    api,
    cloud,
    db_url,
    http,
    make_tenant,
    postgres_url,
    settings,
    tenant,
)
from sec_cloud_support import enroll, order_event  # noqa: F401

from cloud.db import schema as t

DEAD_LETTERS = "/api/v1/sync/dead-letters"


async def _repaired_letter(tenant: Any, enroll: Any, cloud: Any) -> tuple[Any, dict, dict]:
    """A gateway's order refused for a fractional amount, then repaired in the stored letter
    (what an operator does before a retry): retrying it now applies the order."""
    site = await tenant.site()
    machine_id = (await tenant.machine(site["id"]))["machine"]["id"]
    gateway = await enroll(site["id"])
    pushed = order_event(1, machine_id, total_amount=35.5)
    reply = await gateway.push([pushed])
    assert reply.status == 200 and reply.data["rejected"], reply.body
    [letter] = (await tenant.admin.call("GET", DEAD_LETTERS)).data
    raw = json.loads(letter["payload"])
    raw["payload"]["total_amount"] = 2500
    async with cloud.engine.begin() as conn:
        await conn.execute(
            t.sync_dead_letters.update()
            .where(t.sync_dead_letters.c.id == letter["id"])
            .values(payload=json.dumps(raw))
        )
    return gateway, letter, raw


async def _stored(cloud: Any, event_id: str, order_id: str) -> tuple[int, int]:
    async with cloud.engine.connect() as conn:
        events = await conn.scalar(
            sa.select(sa.func.count())
            .select_from(t.sync_events)
            .where(t.sync_events.c.event_id == event_id)
        )
        orders = await conn.scalar(
            sa.select(sa.func.count()).select_from(t.orders).where(t.orders.c.id == order_id)
        )
    return int(events or 0), int(orders or 0)


async def test_a_revoked_gateways_dead_letter_cannot_be_retried(tenant, enroll, cloud):
    gateway, letter, raw = await _repaired_letter(tenant, enroll, cloud)
    revoked = await tenant.admin.call("POST", f"/api/v1/gateways/{gateway.id}/revoke")
    assert revoked.status == 200, revoked.body

    retry = await tenant.admin.call("POST", f"{DEAD_LETTERS}/{letter['id']}/retry")
    assert retry.status == 409, retry.body
    assert retry.error["code"] == "dead_letter_not_retryable"
    assert "revoked" in retry.error["message"]
    assert await _stored(cloud, raw["event_id"], raw["payload"]["id"]) == (0, 0)
    [still] = (await tenant.admin.call("GET", DEAD_LETTERS)).data
    assert still["state"] == "open"


async def test_a_storm_of_retries_applies_the_event_once(tenant, enroll, cloud):
    _, letter, raw = await _repaired_letter(tenant, enroll, cloud)
    replies = await asyncio.gather(
        *(tenant.admin.call("POST", f"{DEAD_LETTERS}/{letter['id']}/retry") for _ in range(8))
    )
    statuses = sorted(reply.status for reply in replies)
    assert statuses == [200] + [409] * 7, [reply.body for reply in replies]
    for reply in replies:
        if reply.status == 409:
            assert reply.error["code"] == "dead_letter_not_retryable"
    assert await _stored(cloud, raw["event_id"], raw["payload"]["id"]) == (1, 1)


async def test_a_retry_racing_the_gateways_resend_stores_the_event_once(tenant, enroll, cloud):
    gateway, letter, raw = await _repaired_letter(tenant, enroll, cloud)
    resend = dict(raw, seq=2)
    retry, push = await asyncio.gather(
        tenant.admin.call("POST", f"{DEAD_LETTERS}/{letter['id']}/retry"),
        gateway.push([resend]),
    )
    assert push.status == 200, push.body
    assert retry.status in (200, 409), retry.body
    if retry.status == 409:
        assert retry.error["code"] == "dead_letter_not_retryable"
    assert await _stored(cloud, raw["event_id"], raw["payload"]["id"]) == (1, 1)
    assert (await tenant.admin.call("GET", DEAD_LETTERS)).data == []
