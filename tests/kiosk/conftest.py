"""Fixtures for the kiosk page tests: a real gateway, the real firmware, headless Chromium."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kiosk_support import kiosk_gateway_settings, load_kiosk_site, m1_firmware
from playwright.async_api import Browser, Page, async_playwright
from standalone_site import MachineCreds

from edge.app import Gateway
from tools.browser import LAUNCH_ARGS, BrowserUnavailable, ensure_chromium
from tools.virtual_esp32 import VirtualDevice

VIEWPORT = {"width": 1024, "height": 768}


@pytest.fixture(scope="session")
def kiosk_creds() -> dict[str, MachineCreds]:
    return {machine_id: MachineCreds.new(machine_id) for machine_id in ("M1", "M2")}


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    try:
        return ensure_chromium()
    except BrowserUnavailable as exc:
        pytest.fail(f"kiosk page tests need Chromium: {exc}")


@pytest.fixture
async def kiosk_gateway(
    tmp_path: Path, kiosk_creds: dict[str, MachineCreds]
) -> AsyncIterator[Gateway]:
    async with Gateway(kiosk_gateway_settings(tmp_path / "gw")) as gw:
        await load_kiosk_site(gw, kiosk_creds)
        yield gw


@pytest.fixture
async def kiosk_device(
    tmp_path: Path, kiosk_gateway: Gateway, kiosk_creds: dict[str, MachineCreds]
) -> AsyncIterator[VirtualDevice]:
    """The real firmware for M1 in the MicroPython unix port, online at the gateway."""
    async with m1_firmware(kiosk_gateway, kiosk_creds["M1"], tmp_path / "flash-M1") as dev:
        yield dev


@pytest.fixture
async def browser(chromium_path: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(
            executable_path=str(chromium_path), args=list(LAUNCH_ARGS), headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport=VIEWPORT, locale="en-IN")  # type: ignore[arg-type]
    context.set_default_timeout(10_000)
    try:
        yield await context.new_page()
    finally:
        await context.close()
