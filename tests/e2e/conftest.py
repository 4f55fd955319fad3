"""Fixtures for the end-to-end tests: a whole site, all real, on loopback."""

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from e2e_money import rzp, upi_site  # noqa: F401  (fixtures: UPI through the Razorpay test server)
from e2e_site import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    Site,
    cloud_settings,
    gateway_settings,
    start_machines,
)
from polling import wait_for

from cloud.server import CloudServer
from edge.app import Gateway
from provisioning.cloud_api import CloudApi


@pytest.fixture
async def bare_site(tmp_path: Path) -> AsyncIterator[Site]:
    """Cloud with a tenant, an admin and a site, and the site's gateway enrolled; no machines."""
    async with contextlib.AsyncExitStack() as stack:
        cloud = await stack.enter_async_context(CloudServer(cloud_settings(tmp_path)))
        await cloud.create_tenant("E2E Vending", ADMIN_EMAIL, ADMIN_PASSWORD)
        admin = await stack.enter_async_context(CloudApi(cloud.api_url))
        await admin.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        site_id = (await admin.create_site("E2E site", "Loopback"))["id"]
        token = await admin.enrollment_token(site_id)
        gateway = await stack.enter_async_context(
            Gateway(gateway_settings(tmp_path, cloud.api_url, token))
        )

        async def enrolled() -> bool:
            return bool(gateway.cloud.status()["enrolled"])

        await wait_for(enrolled)
        http = await stack.enter_async_context(aiohttp.ClientSession(base_url=gateway.http_url))
        yield Site(tmp_path, cloud, admin, site_id, gateway, http)


@pytest.fixture
async def site(bare_site: Site) -> AsyncIterator[Site]:
    """``bare_site`` plus two machines onboarded through the API, each with its firmware online."""
    async with contextlib.AsyncExitStack() as stack:
        await start_machines(bare_site, stack, ("Lobby", "Canteen"))
        yield bare_site
