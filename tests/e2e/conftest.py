"""Fixtures for the end-to-end tests: a whole site, all real, on loopback."""

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from e2e_site import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    Site,
    cloud_settings,
    device_config,
    gateway_settings,
    onboard,
    wait_for,
)

from cloud.server import CloudServer
from edge.app import Gateway
from provisioning.cloud_api import CloudApi
from tools.virtual_esp32 import VirtualDevice


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    """Cloud + enrolled gateway + two machines, each with its firmware online."""
    async with contextlib.AsyncExitStack() as stack:
        cloud = await stack.enter_async_context(CloudServer(cloud_settings(tmp_path)))
        await cloud.create_tenant("E2E Vending", ADMIN_EMAIL, ADMIN_PASSWORD)
        admin = await stack.enter_async_context(CloudApi(cloud.api_url))
        await admin.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        site_id = (await admin.create_site("E2E site", "Loopback"))["id"]
        machines = [await onboard(admin, site_id, name) for name in ("Lobby", "Canteen")]
        token = await admin.enrollment_token(site_id)

        gateway = await stack.enter_async_context(
            Gateway(gateway_settings(tmp_path, cloud.api_url, token))
        )

        async def machines_pulled() -> bool:
            return len(await gateway.store.list_machines()) == len(machines)

        await wait_for(machines_pulled)
        http = await stack.enter_async_context(aiohttp.ClientSession(base_url=gateway.http_url))
        site = Site(tmp_path, cloud, admin, site_id, gateway, http, machines)

        for machine in machines:
            flash = tmp_path / f"flash-{machine.id}"
            VirtualDevice.install(flash, device_config(machine, gateway.mqtt_port))
            machine.device = await stack.enter_async_context(VirtualDevice(flash))
        for machine in machines:
            assert machine.device is not None
            await machine.device.wait_online(timeout=20)

        async def all_online() -> bool:
            listed = await gateway.store.list_machines()
            return all(m.online for m in listed)

        await wait_for(all_online)
        yield site
