"""Fixtures for the gateway tests: a real gateway (SQLite, amqtt) on ephemeral ports."""

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from brokers import Mosquitto, gateway_mosquitto
from gw_support import creds, gateway_settings, load_site
from standalone_site import MachineCreds

from edge.app import Gateway

__all__ = ["creds"]  # the machines' credentials, a session fixture


@pytest.fixture
async def gateway(tmp_path: Path, creds: dict[str, MachineCreds]) -> AsyncIterator[Gateway]:
    async with Gateway(gateway_settings(tmp_path / "gw")) as gw:
        await load_site(gw, creds)
        yield gw


@pytest.fixture
async def http(gateway: Gateway) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=gateway.http_url) as session:
        yield session


@pytest.fixture
async def mosquitto(tmp_path: Path, creds: dict[str, MachineCreds]) -> AsyncIterator[Mosquitto]:
    """A private Mosquitto on a free loopback port, with passwords and the generated ACL."""
    devices = {c.id: c.secret for c in creds.values()}
    async with gateway_mosquitto(tmp_path / "mosquitto", devices) as broker:
        yield broker
