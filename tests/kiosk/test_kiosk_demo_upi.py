"""A UPI purchase on the kiosk page in headless Chromium, through the cloud's real Razorpay
adapter, as ``make demo`` sets it up: the tenant's Razorpay credentials set through the admin
API, the cloud pointed at the local Razorpay test server, the gateway enrolled with the cloud,
and the machine's real firmware in the MicroPython unix port. The customer picks an item,
presses UPI, sees the QR code and the amount; the test server takes the payment as the
customer's UPI app would (its pay endpoint) and sends its signed webhooks to the cloud; the
kiosk then says the item is coming (the motor is held mid-run to see it) and that it is done."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from gw_support import enrolled_gateway_settings
from playwright.async_api import Page, expect
from polling import wait_for
from razorpay_fixtures import new_credentials, razorpay_settings
from test_kiosk_page import ORDER_END_MS, screenshot_dir, watch_page_errors

from cloud.server import CloudServer
from edge.app import Gateway
from provisioning.cloud_api import CloudApi
from tools.razorpay_server import RazorpayTestServer
from tools.virtual_esp32 import VirtualDevice

ADMIN_EMAIL = "admin@kiosk-upi.example"
ADMIN_PASSWORD = "kiosk upi admin password"
CATALOG = [
    {"slot": "A1", "name": "Masala Chips", "category": "snacks", "price": 2000, "quantity": 5},
    {"slot": "A2", "name": "Mango Juice", "category": "drinks", "price": 3550, "quantity": 2},
]


@dataclass
class UpiSite:
    razorpay: RazorpayTestServer
    cloud: CloudServer
    gateway: Gateway
    machine_id: str
    catalog: dict[str, str]  # slot -> catalog item id
    device: VirtualDevice


@pytest.fixture
async def upi_site(tmp_path: Path) -> AsyncIterator[UpiSite]:
    async with contextlib.AsyncExitStack() as stack:
        razorpay = await stack.enter_async_context(
            RazorpayTestServer(webhook_retry_delays=(0.2, 0.5, 1.0), refund_delay_s=0.1)
        )
        cloud = await stack.enter_async_context(
            CloudServer(
                razorpay_settings(
                    f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}",
                    tmp_path / "cloud-data",
                    razorpay.url,
                )
            )
        )
        await cloud.create_tenant("Kiosk UPI", ADMIN_EMAIL, ADMIN_PASSWORD)
        admin = await stack.enter_async_context(CloudApi(cloud.api_url))
        await admin.login(ADMIN_EMAIL, ADMIN_PASSWORD)

        # As the demo does it: the account on the test server (webhooks to the cloud's URL for
        # this tenant), then the same credentials through the admin API.
        creds = new_credentials()
        webhook_url = (await admin.payment_provider())["webhook_url"]
        razorpay.add_account(
            creds["key_id"], creds["key_secret"], creds["webhook_secret"], webhook_url
        )
        configured = await admin.set_payment_provider(
            "razorpay",
            creds["key_id"],
            key_secret=creds["key_secret"],
            webhook_secret=creds["webhook_secret"],
        )
        assert configured["upi_enabled"] is True

        site_id = (await admin.create_site("Kiosk UPI site", "Loopback"))["id"]
        token = await admin.enrollment_token(site_id)
        gateway = await stack.enter_async_context(
            Gateway(
                enrolled_gateway_settings(
                    tmp_path,
                    cloud.api_url,
                    token,
                    gateway_name="kiosk-upi-gateway",
                    sync_pull_interval_s=1.0,
                    sync_backoff_max_s=1.0,
                    dispense_resend_s=1.0,
                    dispense_give_up_s=10.0,
                    dispense_command_ttl_s=8,  # must expire before the give-up
                    engine_tick_s=0.2,
                )
            )
        )
        onboarded = await admin.onboard_machine(name="Lobby", site_id=site_id, catalog=CATALOG)
        machine_id = onboarded["machine"]["id"]
        catalog = {item["slot"]: item["id"] for item in onboarded["machine"]["catalog"]}
        credentials = onboarded["credentials"]

        async def pulled() -> bool:
            return any(m.id == machine_id for m in await gateway.store.list_machines())

        await wait_for(pulled, within=30)
        flash = tmp_path / "flash-lobby"
        config: dict[str, object] = {
            "machine_id": machine_id,
            "mqtt_host": "127.0.0.1",
            "mqtt_port": gateway.mqtt_port,
            "mqtt_password": credentials["mqtt_password"],
            "command_key": credentials["command_key"],
            "sim_slots": {item["slot"]: item["quantity"] for item in CATALOG},
            "motor_ms": 50,
            "drop_timeout_ms": 300,
            "resend_interval_s": 1,
        }
        await asyncio.to_thread(VirtualDevice.install, flash, config)
        device = await stack.enter_async_context(VirtualDevice(flash))
        await device.wait_online(timeout=20)

        # What the kiosk page asks before it shows the UPI button: the gateway has the
        # tenant's money policy and its payment path to the cloud is up.
        async with aiohttp.ClientSession(base_url=gateway.http_url) as http:

            async def upi_offered() -> bool:
                path = f"/api/v1/machines/{machine_id}/payment-methods"
                async with http.get(path) as response:
                    methods = (await response.json())["data"]["payment_methods"]
                return any(m["method"] == "upi" and m["available"] for m in methods)

            await wait_for(upi_offered, within=30, interval=0.2)
        yield UpiSite(razorpay, cloud, gateway, machine_id, catalog, device)

        # amqtt's shutdown can hang when it races a client's disconnect: stop the device
        # first and let the gateway see it go.
        await device.stop()

        async def offline() -> bool:
            return (await gateway.store.device_counts())["online"] == 0

        await wait_for(offline, within=10)


async def test_kiosk_upi_purchase_through_razorpay(
    page: Page, upi_site: UpiSite, tmp_path: Path
) -> None:
    errors = watch_page_errors(page)
    shots = screenshot_dir(tmp_path)
    site, razorpay = upi_site, upi_site.razorpay
    juice = site.catalog["A2"]

    await page.goto(f"{site.gateway.http_url}/kiosk?machine={site.machine_id}")
    await expect(page.get_by_test_id("machine-online")).to_have_text("Online")
    # The tenant pays through Razorpay: the UPI button, not the sandbox's.
    await expect(page.get_by_test_id("pay-upi")).to_be_visible()
    await expect(page.get_by_test_id("pay-sandbox")).to_be_hidden()
    tile = page.get_by_test_id(f"tile-{juice}")
    await expect(tile).to_contain_text("Mango Juice")
    await tile.click()
    await page.get_by_test_id("pay-upi").click()
    await page.get_by_test_id("checkout").click()

    # The QR code the page shows is the one Razorpay (the test server) made for this order.
    status = page.get_by_test_id("order-status")
    await expect(status).to_have_attribute("data-status", "awaiting_payment")
    await expect(page.get_by_test_id("upi-amount")).to_have_text("₹35.50")
    payload = page.get_by_test_id("upi-payload")
    await expect(payload).to_contain_text("upi://pay?")
    await page.wait_for_function(
        "() => { const img = document.querySelector('[data-testid=upi-qr]');"
        " return img.complete && img.naturalWidth > 100; }"
    )
    [qr] = razorpay.state["qr_codes"]
    assert (qr["payment_amount"], qr["status"], qr["usage"]) == (3550, "active", "single_use")
    assert await payload.inner_text() == qr["image_content"]
    order_id = qr["notes"]["order_id"]
    await page.screenshot(path=str(shots / "kiosk-razorpay-qr.png"))

    # The motor stops mid-run until released, so the page is seen while the item is coming.
    await site.device.sim("hold", point="motor")
    # The customer's phone pays it: the test server captures the payment and sends its
    # signed webhooks to the cloud; the machine vends once the gateway hears of it.
    async with (
        aiohttp.ClientSession() as phone,
        phone.post(f"{razorpay.url}/_test/qr_codes/{qr['id']}/pay") as paid,
    ):
        assert paid.status == 200, await paid.text()
        captured: dict[str, Any] = await paid.json()
    assert (captured["status"], captured["amount"]) == ("captured", 3550)

    await expect(status).to_have_attribute("data-status", "dispensing", timeout=ORDER_END_MS)
    await expect(page.get_by_test_id("order-message")).to_have_text(
        "Your items are coming. Please wait."
    )
    await expect(page.get_by_test_id("upi-panel")).to_be_hidden()
    await site.device.wait_output("SIM_HOLD motor", timeout=10)
    await page.screenshot(path=str(shots / "kiosk-razorpay-dispensing.png"))
    await site.device.sim("release", point="motor")

    await expect(status).to_have_attribute("data-status", "completed", timeout=ORDER_END_MS)
    await expect(status).to_have_text("Completed")
    await expect(page.get_by_test_id("order-message")).to_have_text("Enjoy!")
    await expect(page.get_by_test_id(f"order-item-{juice}")).to_contain_text("1 of 1 dispensed")
    await expect(page.get_by_test_id("upi-panel")).to_be_hidden()
    body = await page.get_by_test_id("order-screen").inner_text()
    assert "refund" not in body.lower(), body
    await page.screenshot(path=str(shots / "kiosk-razorpay-completed.png"))

    assert site.device.motor_runs() == 1
    order = await site.gateway.store.get_order(order_id)
    assert order.payment is not None
    assert (order.paid_amount, order.payment.provider) == (3550, "razorpay")
    assert order.payment.qr_code_id == qr["id"]
    # The cloud took each signed webhook of the payment the first time it was sent.
    sent = ("payment.captured", "qr_code.credited", "qr_code.closed")
    await razorpay.wait_until(lambda: all(razorpay.delivered(e) for e in sent), within=10)
    assert sorted((d.event, len(d.attempts)) for d in razorpay.delivered()) == sorted(
        (e, 1) for e in sent
    )
    assert errors == []
