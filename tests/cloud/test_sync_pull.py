"""Pulling versioned machine state by cursor."""

from contracts.credentials import verify_secret
from contracts.sync import StateResponse


async def test_cursor_semantics(tenant, enroll):
    site = await tenant.site()
    onboarded = await tenant.machine(site["id"])
    mid = onboarded["machine"]["id"]
    other = (await tenant.machine(site["id"], name="M2", catalog=[]))["machine"]["id"]
    elsewhere = await tenant.site("Elsewhere")
    await tenant.machine(elsewhere["id"], name="Far")
    gateway = await enroll(site["id"])

    first = await gateway.pull(0)
    assert first.status == 200
    state = StateResponse.model_validate(first.data)
    assert {m.id for m in state.machines} == {mid, other}
    assert state.cursor == max(m.version for m in state.machines)
    m1 = next(m for m in state.machines if m.id == mid)
    assert verify_secret(onboarded["credentials"]["mqtt_password"], m1.mqtt_secret_hash)
    assert m1.command_key == onboarded["credentials"]["command_key"]
    assert {i.slot: i.price for i in m1.catalog} == {"A1": 2500, "A2": 1000}

    empty = await gateway.pull(state.cursor)
    assert empty.data == {"cursor": state.cursor, "machines": []}

    put = await tenant.admin.call(
        "PUT",
        f"/api/v1/machines/{mid}/catalog",
        {"items": [{"slot": "A1", "name": "Cola", "price": 2700, "quantity": 6}]},
    )
    assert put.status == 200
    again = StateResponse.model_validate((await gateway.pull(state.cursor)).data)
    assert [m.id for m in again.machines] == [mid]
    assert again.cursor > state.cursor
    assert [(i.slot, i.price, i.quantity) for i in again.machines[0].catalog] == [("A1", 2700, 6)]
    assert again.machines[0].catalog[0].stock_rev == m1.catalog[0].stock_rev + 1

    await tenant.admin.call("DELETE", f"/api/v1/machines/{other}/decommission")
    gone = StateResponse.model_validate((await gateway.pull(again.cursor)).data)
    assert [(m.id, m.status) for m in gone.machines] == [(other, "decommissioned")]

    bad = await gateway.pull(-1)
    assert bad.status == 400


async def test_provision_device_rotates_credentials(tenant, enroll):
    site = await tenant.site()
    onboarded = await tenant.machine(site["id"])
    mid = onboarded["machine"]["id"]
    gateway = await enroll(site["id"])
    cursor = StateResponse.model_validate((await gateway.pull(0)).data).cursor

    rotated = await tenant.admin.call("POST", f"/api/v1/machines/{mid}/provision-device")
    assert rotated.status == 201
    fresh = rotated.data
    assert fresh["mqtt_password"] != onboarded["credentials"]["mqtt_password"]
    state = StateResponse.model_validate((await gateway.pull(cursor)).data)
    [machine] = state.machines
    assert machine.command_key == fresh["command_key"]
    assert verify_secret(fresh["mqtt_password"], machine.mqtt_secret_hash)
    assert not verify_secret(onboarded["credentials"]["mqtt_password"], machine.mqtt_secret_hash)

    viewer = await tenant.user("viewer")
    assert (await viewer.call("POST", f"/api/v1/machines/{mid}/provision-device")).status == 403
