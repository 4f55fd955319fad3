"""The cloud goes away: cash vending goes on, and every order reaches the cloud once later."""

from collections import Counter
from urllib.parse import urlsplit

from e2e_site import Site, cloud_settings
from polling import wait_for

from cloud.server import CloudServer


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


async def test_cash_vends_continue_while_the_cloud_is_down(site: Site) -> None:
    lobby, canteen = site.machines
    assert lobby.device is not None and canteen.device is not None
    api_port, sync_port = _port(site.cloud.api_url), _port(site.cloud.sync_url)
    await site.cloud.stop()

    # A sandbox payment needs the cloud: refused clearly, and the stock is not held.
    async with site.http.post(
        "/api/v1/orders",
        json={
            "machine_id": lobby.id,
            "items": [{"id": lobby.catalog["A1"], "quantity": 1}],
            "payment_method": "sandbox",
        },
    ) as response:
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "payment_unavailable"
    refused = [o for o in await site.gateway.store.query("SELECT id, status FROM orders")]
    assert [r["status"] for r in refused] == ["cancelled"]  # kept for the audit trail

    order_ids = []
    for machine, slot, price in ((lobby, "A1", 2000), (canteen, "A2", 3500), (lobby, "A2", 3500)):
        assert machine.device is not None
        order = await site.order(machine, {slot: 1}, "cash")
        await machine.device.sim("coin", amount=price)
        done = await site.finished(order["id"])
        assert done["status"] == "completed", done
        order_ids.append(order["id"])

    backlog = await site.gateway.store.outbox_backlog()
    assert backlog > 0  # nothing could be pushed

    # The cloud comes back on the same addresses (the gateway knows its sync URL) and database.
    restarted = CloudServer(cloud_settings(site.root, http_port=api_port, sync_port=sync_port))
    async with restarted:
        site.cloud = restarted

        async def all_arrived() -> bool:
            orders = await site.cloud_orders()
            done = {o["id"] for o in orders if o["status"] == "completed"}
            return set(order_ids) <= done

        await wait_for(all_arrived, within=30)

        async def drained() -> bool:
            return await site.gateway.store.outbox_backlog() == 0

        await wait_for(drained)
        orders = await site.cloud_orders()
        assert Counter(o["id"] for o in orders) == dict.fromkeys([*order_ids, refused[0]["id"]], 1)
        assert {o["id"]: o["status"] for o in orders}[refused[0]["id"]] == "cancelled"
