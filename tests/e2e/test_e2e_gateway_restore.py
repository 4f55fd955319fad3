"""A gateway whose database is replaced (disk swapped, backup restored) keeps its cloud identity
but numbers its outbox from 1 again. Nothing it records afterwards may be lost to the cloud's
older high-water mark."""

import contextlib
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from e2e_site import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    Machine,
    cloud_settings,
    gateway_settings,
    onboard,
)
from polling import wait_for

from cloud.server import CloudServer
from contracts.credentials import hash_secret
from contracts.sync import CatalogItemState, MachineState, StateResponse
from edge.app import Gateway
from provisioning.cloud_api import CloudApi


async def _cash_order(
    gateway: Gateway, machine: Machine, replaces: tuple[str, str] | None = None
) -> tuple[str, str]:
    """The new order's id and token; ``replaces``: the unpaid cash order (id, token) it
    supersedes."""
    body = {
        "machine_id": machine.id,
        "items": [{"id": machine.catalog["A1"], "quantity": 1}],
        "payment_method": "cash",
    }
    headers = {"X-Order-Token": replaces[1]} if replaces else {}
    async with (
        aiohttp.ClientSession(base_url=gateway.http_url) as http,
        http.post("/api/v1/orders", json=body, headers=headers) as response,
    ):
        assert response.status == 201, await response.text()
        data = (await response.json())["data"]
        return str(data["id"]), str(data["order_token"])


async def _cancel(gateway: Gateway, order: tuple[str, str]) -> None:
    order_id, token = order
    async with (
        aiohttp.ClientSession(base_url=gateway.http_url) as http,
        http.post(
            f"/api/v1/orders/{order_id}/cancel", headers={"X-Order-Token": token}
        ) as response,
    ):
        assert response.status == 200, await response.text()


async def _drained(gateway: Gateway) -> bool:
    return await gateway.store.outbox_backlog() == 0


async def test_orders_after_a_database_restore_all_reach_the_cloud(tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        cloud = await stack.enter_async_context(CloudServer(cloud_settings(tmp_path)))
        await cloud.create_tenant("Restore Co", ADMIN_EMAIL, ADMIN_PASSWORD)
        admin = await stack.enter_async_context(CloudApi(cloud.api_url))
        await admin.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        site_id = (await admin.create_site("Restore site"))["id"]
        machine = await onboard(admin, site_id, "Lobby")
        settings = gateway_settings(
            tmp_path, cloud.api_url, await admin.enrollment_token(site_id)
        ).model_copy(update={"sync_push_batch": 1})

        # First life of the gateway: enough history that the cloud's high-water mark is high.
        async with Gateway(settings) as gateway:

            async def pulled() -> bool:
                return len(await gateway.store.list_machines()) == 1

            await wait_for(pulled)
            for _ in range(4):
                await _cancel(gateway, await _cash_order(gateway, machine))
            await wait_for(lambda: _drained(gateway))
        history = len(await admin.orders(limit=100))
        assert history == 4

        # The cloud is away while the gateway comes back on a blank database (same identity).
        api_port, sync_port = urlsplit(cloud.api_url).port, urlsplit(cloud.sync_url).port
        await cloud.stop()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{settings.db_path}{suffix}").unlink(missing_ok=True)  # noqa: ASYNC240
        async with Gateway(settings) as gateway:
            secret = machine.credentials["mqtt_password"]
            await gateway.store.apply_state(
                StateResponse(
                    cursor=0,  # the next pull from the cloud refreshes everything
                    machines=[
                        MachineState(
                            id=machine.id, tenant_id="restored", site_id=site_id, name="Lobby",
                            status="active", mqtt_secret_hash=hash_secret(secret, iterations=1000),
                            command_key=machine.credentials["command_key"],
                            catalog=[
                                CatalogItemState(id=machine.catalog["A1"], slot="A1",
                                                 name="Water", price=2000, currency="INR",
                                                 quantity=5),
                            ],
                            version=1,
                        )
                    ],
                )
            )  # fmt: skip
            new_orders: list[str] = []
            last: tuple[str, str] | None = None
            for _ in range(3):
                # Each one supersedes the one before (one open cash order per machine).
                last = await _cash_order(gateway, machine, last)
                new_orders.append(last[0])
            assert await gateway.store.outbox_backlog() >= 3

            assert api_port is not None and sync_port is not None
            restarted = CloudServer(
                cloud_settings(tmp_path, http_port=api_port, sync_port=sync_port)
            )
            async with restarted:
                await wait_for(lambda: _drained(gateway), within=30)
                cloud_ids = {o["id"] for o in await admin.orders(limit=100)}
        assert set(new_orders) <= cloud_ids, "events recorded after the restore were lost"
