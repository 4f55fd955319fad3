"""A jammed slot: the order ends partially_completed, the failed item is recorded, stock right."""

from e2e_site import Site
from polling import wait_for


async def test_jammed_slot_gives_partially_completed_and_keeps_stock_right(site: Site) -> None:
    lobby = site.machines[0]
    assert lobby.device is not None
    await lobby.device.sim("jam", slot="A2", on=True)

    order = await site.order(lobby, {"A1": 1, "A2": 1}, "cash")
    await lobby.device.sim("coin", amount=5500)
    done = await site.finished(order["id"])

    assert done["status"] == "partially_completed"
    items = {item["slot"]: item for item in done["items"]}
    assert (items["A1"]["dispensed"], items["A1"]["dispense_status"]) == (1, "dispensed")
    assert (items["A2"]["failed"], items["A2"]["dispense_status"]) == (1, "failed")
    # The water came out; the jammed chips are still in the machine and sellable once fixed.
    assert await site.kiosk_catalog(lobby) == {"A1": 4, "A2": 3}

    cloud_order = await site.synced(order["id"], "partially_completed")
    cloud_items = {item["slot"]: item for item in cloud_order["items"]}
    assert cloud_items["A2"]["failed"] == 1 and cloud_items["A1"]["dispensed"] == 1

    async def cloud_stock_right() -> bool:
        stock = {i["slot"]: i["quantity"] for i in await site.admin.catalog(lobby.id)}
        return stock == {"A1": 4, "A2": 3}

    await wait_for(cloud_stock_right)
