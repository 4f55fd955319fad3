"""Onboarding (secrets once), catalog, config, status, decommission."""

from contracts.credentials import verify_secret


async def test_onboarding_returns_secrets_once(tenant, cloud):
    site = await tenant.site()
    onboarded = await tenant.machine(site["id"])
    creds = onboarded["credentials"]
    machine = onboarded["machine"]
    assert creds["mqtt_username"] == creds["machine_id"] == machine["id"]
    assert len(creds["command_key"]) == 64 and bytes.fromhex(creds["command_key"])
    assert [i["slot"] for i in machine["catalog"]] == ["A1", "A2"]

    detail = await tenant.admin.call("GET", f"/api/v1/machines/{machine['id']}")
    assert detail.status == 200
    text = str(detail.body)
    assert creds["mqtt_password"] not in text and creds["command_key"] not in text
    listing = await tenant.admin.call("GET", "/api/v1/machines")
    assert creds["mqtt_password"] not in str(listing.body)

    # Only the hash is stored, and it verifies the secret shown once.
    import sqlalchemy as sa

    from cloud.db import schema as t

    async with cloud.engine.connect() as conn:
        stored = await conn.scalar(
            sa.select(t.machines.c.mqtt_secret_hash).where(t.machines.c.id == machine["id"])
        )
    assert stored != creds["mqtt_password"]
    assert verify_secret(creds["mqtt_password"], stored)


async def test_duplicates_conflict(tenant):
    site = await tenant.site()
    dup_slot = await tenant.admin.call(
        "POST",
        "/api/v1/machines/onboard",
        {
            "name": "D",
            "site_id": site["id"],
            "catalog": [
                {"slot": "A1", "name": "x", "price": 1},
                {"slot": "A1", "name": "y", "price": 2},
            ],
        },
    )
    assert dup_slot.status == 409
    assert dup_slot.error["code"] == "conflict"
    await tenant.machine(site["id"], name="Same")
    dup_name = await tenant.admin.call(
        "POST", "/api/v1/machines/onboard", {"name": "Same", "site_id": site["id"]}
    )
    assert dup_name.status == 409
    other_site = await tenant.site("Second")
    assert (await tenant.machine(other_site["id"], name="Same"))["machine"]["name"] == "Same"
    dup_site = await tenant.admin.call("POST", "/api/v1/sites", {"name": "Second"})
    assert dup_site.status == 409


async def test_catalog_config_status_decommission(tenant):
    site = await tenant.site()
    machine = (await tenant.machine(site["id"]))["machine"]
    mid = machine["id"]
    before = {i["slot"]: i for i in machine["catalog"]}

    put = await tenant.admin.call(
        "PUT",
        f"/api/v1/machines/{mid}/catalog",
        {
            "items": [
                {"slot": "A1", "name": "Cola Zero", "price": 3000},  # no quantity: count kept
                {"slot": "B1", "name": "Water", "price": 1500, "quantity": 8, "capacity": 10},
            ]
        },
    )
    assert put.status == 200, put.body
    after = {i["slot"]: i for i in put.data}
    assert set(after) == {"A1", "B1"}
    assert after["A1"]["id"] == before["A1"]["id"]
    assert after["A1"]["quantity"] == 5 and after["A1"]["stock_rev"] == before["A1"]["stock_rev"]
    assert after["A1"]["price"] == 3000
    restock = await tenant.admin.call(
        "PUT",
        f"/api/v1/machines/{mid}/catalog",
        {"items": [{"slot": "A1", "name": "Cola Zero", "price": 3000, "quantity": 9}]},
    )
    assert restock.data[0]["quantity"] == 9
    assert restock.data[0]["stock_rev"] == before["A1"]["stock_rev"] + 1
    dup = await tenant.admin.call(
        "PUT",
        f"/api/v1/machines/{mid}/catalog",
        {
            "items": [
                {"slot": "A1", "name": "a", "price": 1},
                {"slot": "A1", "name": "b", "price": 1},
            ]
        },
    )
    assert dup.status == 409

    config = await tenant.admin.call(
        "PUT", f"/api/v1/machines/{mid}/config", {"config": {"motor_ms": 1200}}
    )
    assert config.status == 200 and config.data["config"] == {"motor_ms": 1200}
    got = await tenant.admin.call("GET", f"/api/v1/machines/{mid}/config")
    assert got.data["config"] == {"motor_ms": 1200}
    assert got.data["version"] > machine["version"]

    status = await tenant.admin.call("GET", f"/api/v1/machines/{mid}/status")
    assert status.status == 200
    assert status.data["status"] == "active" and status.data["orders_total"] == 0

    gone = await tenant.admin.call("DELETE", f"/api/v1/machines/{mid}/decommission")
    assert gone.status == 200 and gone.data["status"] == "decommissioned"
    status = await tenant.admin.call("GET", f"/api/v1/machines/{mid}/status")
    assert status.data["status"] == "decommissioned"
