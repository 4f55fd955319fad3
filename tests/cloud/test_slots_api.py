"""The operator's slot switches: enable_rev grows so the gateway adopts them, the machine's
version moves and its site's gateways are told, every switch is audited."""

import sqlalchemy as sa
from report_support import Pusher, at

from cloud.db import schema as t


async def _audit(cloud, target_id):
    async with cloud.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(t.operator_audit)
            .where(t.operator_audit.c.target_id == target_id)
            .order_by(t.operator_audit.c.created_at)
        )
        return [r._asdict() for r in rows]


async def _pending_pulls(cloud, gateway_id):
    async with cloud.engine.connect() as conn:
        return int(
            await conn.scalar(
                sa.select(sa.func.count()).where(
                    t.channel_messages.c.gateway_id == gateway_id,
                    t.channel_messages.c.type == "state.changed",
                    t.channel_messages.c.acked_at.is_(None),
                )
            )
            or 0
        )


async def test_disable_and_enable_a_slot(tenant, enroll, cloud):
    site = await tenant.site()
    machine = (await tenant.machine(site["id"]))["machine"]
    mid = machine["id"]
    a1 = next(i for i in machine["catalog"] if i["slot"] == "A1")
    assert (a1["enabled"], a1["enable_rev"], a1["disabled_reason"]) == (True, 0, None)
    assert a1["consecutive_failures"] == 0 and a1["disabled_at"] is None
    gateway = await enroll(site["id"])
    cursor = (await gateway.pull(0)).data["cursor"]
    operator = await tenant.user("operator")

    off = await operator.call(
        "POST", f"/api/v1/machines/{mid}/slots/A1/disable", {"note": "glass cracked"}
    )
    assert off.status == 200, off.body
    assert off.data["enabled"] is False and off.data["enable_rev"] == 1
    assert off.data["disabled_reason"] == "operator" and off.data["disabled_at"]
    pulled = (await gateway.pull(cursor)).data
    [state] = pulled["machines"]
    slot = next(i for i in state["catalog"] if i["slot"] == "A1")
    assert (slot["enabled"], slot["enable_rev"]) == (False, 1)
    assert await _pending_pulls(cloud, gateway.id) >= 1
    cursor = pulled["cursor"]

    # The gateway disables it again after jams, and says so; the operator enables it.
    await Pusher(gateway).push(
        "slot.state",
        {
            "machine_id": mid,
            "catalog_item_id": a1["id"],
            "slot": "A1",
            "enabled": False,
            "reason": "jammed",
            "consecutive_failures": 3,
            "enable_rev": 1,
        },
        when=at("2031-06-02"),
    )
    jammed = next(
        i
        for i in (await tenant.admin.call("GET", f"/api/v1/machines/{mid}/catalog")).data
        if i["slot"] == "A1"
    )
    assert jammed["disabled_reason"] == "jammed" and jammed["consecutive_failures"] == 3
    on = await operator.call("POST", f"/api/v1/machines/{mid}/slots/A1/enable", {})
    assert on.status == 200, on.body
    assert on.data["enabled"] is True and on.data["enable_rev"] == 2
    assert on.data["disabled_reason"] is None and on.data["consecutive_failures"] == 0
    [state] = (await gateway.pull(cursor)).data["machines"]
    slot = next(i for i in state["catalog"] if i["slot"] == "A1")
    assert (slot["enabled"], slot["enable_rev"]) == (True, 2)
    detail = await tenant.admin.call("GET", f"/api/v1/machines/{mid}")
    assert detail.data["version"] > machine["version"]

    audit = await _audit(cloud, a1["id"])
    assert [r["action"] for r in audit] == ["slot.disable", "slot.enable"]
    assert audit[0]["note"] == f"machine {mid} slot A1: glass cracked"
    assert audit[1]["note"] == f"machine {mid} slot A1"
    assert {r["tenant_id"] for r in audit} == {tenant.id}
    assert audit[0]["user_id"] and audit[0]["target_type"] == "catalog_item"


async def test_slot_switch_refusals(tenant, make_tenant):
    site = await tenant.site()
    mid = (await tenant.machine(site["id"]))["machine"]["id"]
    viewer = await tenant.user("viewer")
    denied = await viewer.call("POST", f"/api/v1/machines/{mid}/slots/A1/disable", {})
    assert denied.status == 403
    missing = await tenant.admin.call("POST", f"/api/v1/machines/{mid}/slots/Z9/disable", {})
    assert missing.status == 404 and "Z9" in missing.error["message"]
    other = await make_tenant()
    hidden = await other.admin.call("POST", f"/api/v1/machines/{mid}/slots/A1/disable", {})
    assert hidden.status == 404
    bad = await tenant.admin.call("POST", f"/api/v1/machines/{mid}/slots/A1/disable", {"note": 5})
    assert bad.status == 400
    await tenant.admin.call("DELETE", f"/api/v1/machines/{mid}/decommission")
    gone = await tenant.admin.call("POST", f"/api/v1/machines/{mid}/slots/A1/enable", {})
    assert gone.status == 409
