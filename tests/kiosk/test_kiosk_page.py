"""The kiosk page in headless Chromium against a real gateway and the real firmware."""

import os
import time
from pathlib import Path

import aiohttp
from kiosk_support import kiosk_gateway_settings, load_kiosk_site
from playwright.async_api import ConsoleMessage, Page, Route, expect
from polling import wait_for
from standalone_site import MachineCreds

from contracts.device_messages import CashCredit
from contracts.sync import PaymentCreate, PaymentIntent
from edge.app import Gateway
from tools.virtual_esp32 import VirtualDevice

ORDER_END_MS = 30_000


def watch_page_errors(page: Page) -> list[str]:
    """JavaScript exceptions and console errors of the page, to assert there were none.

    Chromium logs every 4xx/5xx answer as a console error; for the API those are the envelopes
    the page handles (409, 503), so only failed loads of the page's own files count."""
    errors: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        url = str(msg.location.get("url", ""))
        if msg.type == "error" and "/api/v1/" not in url:
            errors.append(f"console: {msg.text} at {url}")

    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on("console", on_console)
    return errors


def screenshot_dir(tmp_path: Path) -> Path:
    """``KIOSK_SCREENSHOT_DIR`` keeps the screenshots for a human to look at."""
    return Path(os.environ.get("KIOSK_SCREENSHOT_DIR") or tmp_path)


async def test_buy_with_cash_until_completed(
    page: Page, kiosk_gateway: Gateway, kiosk_device: VirtualDevice, tmp_path: Path
) -> None:
    errors = watch_page_errors(page)
    shots = screenshot_dir(tmp_path)

    async def m1_online() -> bool:
        return (await kiosk_gateway.store.device_counts())["online"] == 1

    await wait_for(m1_online)
    await page.goto(f"{kiosk_gateway.http_url}/?machine=M1")
    assert page.url.endswith("/kiosk?machine=M1")  # "/" redirects to the page, keeping the query

    await expect(page.get_by_test_id("machine-name")).to_have_text("Lobby M1")
    await expect(page.get_by_test_id("machine-online")).to_have_text("Online")
    chips = page.get_by_test_id("tile-M1-A1")
    await expect(chips).to_contain_text("Masala Chips")
    await expect(chips).to_contain_text("₹20.00")
    await expect(chips).to_contain_text("5 left")
    await expect(page.get_by_test_id("tile-M1-A2")).to_contain_text("₹35.50")

    await chips.click()
    await page.get_by_test_id("cart-inc-M1-A1").click()
    await expect(page.get_by_test_id("cart-qty-M1-A1")).to_have_text("2")
    await expect(page.get_by_test_id("cart-total")).to_have_text("₹40.00")
    await expect(page.get_by_test_id("checkout")).to_be_disabled()  # no payment method yet
    await page.get_by_test_id("pay-cash").click()
    await expect(page.get_by_test_id("pay-cash")).to_have_attribute("aria-pressed", "true")
    await page.screenshot(path=str(shots / "kiosk-cart.png"))
    await page.get_by_test_id("checkout").click()

    status = page.get_by_test_id("order-status")
    await expect(status).to_have_attribute("data-status", "awaiting_payment")
    await expect(page.get_by_test_id("cash-prompt")).to_have_text("Insert ₹40.00")
    await expect(page.get_by_test_id("cancel-order")).to_be_visible()
    await page.screenshot(path=str(shots / "kiosk-insert.png"))

    await kiosk_device.sim("coin", amount=2000)
    await expect(page.get_by_test_id("cash-paid")).to_have_text("₹20.00")
    await expect(page.get_by_test_id("cash-remaining")).to_have_text("₹20.00")
    await expect(page.get_by_test_id("cash-prompt")).to_have_text("Insert ₹20.00")
    await kiosk_device.sim("coin", amount=2000)

    await expect(status).to_have_attribute("data-status", "completed", timeout=ORDER_END_MS)
    await expect(status).to_have_text("Completed")
    await expect(page.get_by_test_id("order-message")).to_have_text("Enjoy!")
    await expect(page.get_by_test_id("order-item-M1-A1")).to_contain_text("2 of 2 dispensed")
    await expect(page.get_by_test_id("cancel-order")).to_be_hidden()
    await page.screenshot(path=str(shots / "kiosk-completed.png"))
    assert kiosk_device.motor_runs() == 2
    assert await kiosk_gateway.store.stock("M1-A1") == (3, 0)

    await page.get_by_test_id("new-order").click()
    await expect(page.get_by_test_id("tile-M1-A1")).to_contain_text("3 left")
    await expect(page.get_by_test_id("cart-empty")).to_be_visible()
    assert errors == []


async def test_sold_out_caps_and_stock_conflict(
    page: Page, kiosk_gateway: Gateway, tmp_path: Path
) -> None:
    errors = watch_page_errors(page)
    await page.goto(f"{kiosk_gateway.http_url}/kiosk")

    # Two machines at this site: the page asks which one.
    await expect(page.get_by_test_id("machines-screen")).to_be_visible()
    await expect(page.get_by_test_id("machine-M2")).to_contain_text("Offline")
    await page.screenshot(path=str(screenshot_dir(tmp_path) / "kiosk-machines.png"))
    await page.get_by_test_id("machine-M1").click()
    await expect(page).to_have_url(f"{kiosk_gateway.http_url}/kiosk?machine=M1")

    sold_out = page.get_by_test_id("tile-M1-B1")
    await expect(sold_out).to_be_disabled()
    await expect(sold_out).to_contain_text("Sold out")

    # Mango Juice has 2 units: the cart stops there.
    juice = page.get_by_test_id("tile-M1-A2")
    await juice.click()
    await page.get_by_test_id("cart-inc-M1-A2").click()
    await expect(page.get_by_test_id("cart-qty-M1-A2")).to_have_text("2")
    await expect(page.get_by_test_id("cart-inc-M1-A2")).to_be_disabled()
    await expect(juice).to_be_disabled()
    await expect(page.get_by_test_id("cart-total")).to_have_text("₹71.00")

    # Someone else takes one unit after the page loaded its catalog: the gateway answers 409.
    async with (
        aiohttp.ClientSession(base_url=kiosk_gateway.http_url) as http,
        http.post(
            "/api/v1/orders",
            json={
                "machine_id": "M1",
                "items": [{"id": "M1-A2", "quantity": 1}],
                "payment_method": "cash",
            },
        ) as response,
    ):
        assert response.status == 201, await response.text()
        taken = (await response.json())["data"]
    # ... and pays for it, so the page's own cash order cannot supersede it.
    coins = CashCredit(id=os.urandom(16).hex(), amount=taken["total_amount"], ts=int(time.time()))
    await kiosk_gateway.store.record_cash_credit("M1", coins)

    await page.get_by_test_id("pay-cash").click()
    await page.get_by_test_id("checkout").click()
    message = page.get_by_test_id("error-message")
    await expect(message).to_contain_text("Not enough stock")
    await expect(message).to_contain_text("Mango Juice: only 1 left (you asked for 2)")
    await page.screenshot(path=str(screenshot_dir(tmp_path) / "kiosk-conflict.png"))
    # The page reloads the catalog and lowers the cart to what is left.
    await expect(page.get_by_test_id("cart-qty-M1-A2")).to_have_text("1")
    await expect(juice).to_contain_text("1 left")
    await expect(page.get_by_test_id("shop-screen")).to_be_visible()

    # Without a cloud the gateway cannot take UPI: the page offers no UPI button and says why.
    await expect(page.get_by_test_id("pay-sandbox")).to_be_hidden()
    await expect(page.get_by_test_id("pay-upi")).to_be_hidden()
    await expect(page.get_by_test_id("upi-unavailable")).to_contain_text(
        "no connection to the payment service"
    )
    await expect(page.get_by_test_id("upi-unavailable")).to_contain_text("pay with cash")

    rows = await kiosk_gateway.store.query("SELECT count(*) AS n FROM orders")
    assert rows[0]["n"] == 1  # the API order, nothing else
    assert errors == []


class SandboxPayments:
    """The cloud's payment role (``PaymentsPort``); the real cloud runs in the e2e tests."""

    def __init__(self) -> None:
        self.requests: list[PaymentCreate] = []

    async def create_payment(self, request: PaymentCreate) -> PaymentIntent:
        self.requests.append(request)
        return PaymentIntent(
            payment_id=f"pay_{len(self.requests)}",
            order_id=request.order_id,
            provider="sandbox",
            status="created",
            amount=request.amount,
            currency=request.currency,
            qr_payload=f"upi://pay?pa=vend@sandbox&am={request.amount}&tr={request.order_id}",
        )


async def test_upi_sandbox_qr_and_polling_when_the_stream_fails(
    page: Page, tmp_path: Path, kiosk_creds: dict[str, MachineCreds]
) -> None:
    errors = watch_page_errors(page)
    payments = SandboxPayments()
    # A proxy that breaks event streams: the page must fall back to polling the order.
    await page.route("**/api/v1/orders/*/events", lambda route: route.abort("connectionreset"))
    async with Gateway(kiosk_gateway_settings(tmp_path / "gw"), payments=payments) as gw:
        await load_kiosk_site(gw, kiosk_creds)
        await page.goto(f"{gw.http_url}/kiosk?machine=M1")
        await page.get_by_test_id("tile-M1-A2").click()
        await page.get_by_test_id("pay-sandbox").click()
        await page.get_by_test_id("checkout").click()

        status = page.get_by_test_id("order-status")
        await expect(status).to_have_attribute("data-status", "awaiting_payment")
        await expect(page.get_by_test_id("upi-amount")).to_have_text("₹35.50")
        order_id = payments.requests[0].order_id
        await expect(page.get_by_test_id("upi-payload")).to_have_text(
            f"upi://pay?pa=vend@sandbox&am=3550&tr={order_id}"
        )
        # The QR code is drawn by the gateway (segno), so the page needs nothing from outside.
        await page.wait_for_function(
            "() => { const img = document.querySelector('[data-testid=upi-qr]');"
            " return img.complete && img.naturalWidth > 100; }"
        )
        await page.screenshot(path=str(screenshot_dir(tmp_path) / "kiosk-upi.png"))

        await expect(page.get_by_test_id("connection")).to_contain_text("Live updates paused")

        # Cancelled elsewhere (the payment timed out, say): only polling can tell the page.
        await gw.engine.cancel(order_id)
        await expect(status).to_have_attribute("data-status", "cancelled")
        await expect(page.get_by_test_id("order-message")).to_have_text(
            "Order cancelled. Nothing was charged."
        )
        await expect(page.get_by_test_id("upi-panel")).to_be_hidden()
        await page.get_by_test_id("new-order").click()
        await expect(page.get_by_test_id("tile-M1-A2")).to_contain_text("2 left")
        assert (await gw.store.get_order(order_id)).status.value == "cancelled"
    assert errors == []


async def test_checkout_retry_after_lost_answer_reuses_idempotency_key(
    kiosk_gateway: Gateway, page: Page
) -> None:
    errors = watch_page_errors(page)
    keys: list[str] = []

    async def lose_first_answer(route: Route) -> None:
        keys.append(route.request.headers["idempotency-key"])
        if len(keys) == 1:
            await route.fetch()  # the gateway creates the order ...
            await route.abort("connectionreset")  # ... but the kiosk never hears back
        else:
            await route.continue_()

    await page.route("**/api/v1/orders", lose_first_answer)
    await page.goto(f"{kiosk_gateway.http_url}/kiosk?machine=M1")
    await page.get_by_test_id("tile-M1-A1").click()
    await page.get_by_test_id("pay-cash").click()
    await page.get_by_test_id("checkout").click()
    await expect(page.get_by_test_id("error-message")).to_contain_text("Cannot reach")
    await page.get_by_test_id("error-retry").click()

    await expect(page.get_by_test_id("order-status")).to_have_attribute(
        "data-status", "awaiting_payment"
    )
    assert len(keys) == 2 and keys[0] == keys[1]
    rows = await kiosk_gateway.store.query("SELECT id FROM orders")
    assert len(rows) == 1
    await expect(page.get_by_test_id("order-ref")).to_contain_text(rows[0]["id"])

    # A new checkout attempt gets a new key.
    await page.get_by_test_id("cancel-order").click()
    await page.get_by_test_id("new-order").click()
    await page.get_by_test_id("tile-M1-A1").click()
    await page.get_by_test_id("pay-cash").click()
    await page.get_by_test_id("checkout").click()
    await expect(page.get_by_test_id("order-status")).to_have_attribute(
        "data-status", "awaiting_payment"
    )
    assert len(keys) == 3 and keys[2] != keys[0]
    await page.get_by_test_id("cancel-order").click()
    await expect(page.get_by_test_id("order-status")).to_have_attribute("data-status", "cancelled")
    assert errors == []


async def test_reloaded_kiosk_starts_over_its_own_cash_order(
    kiosk_gateway: Gateway, page: Page
) -> None:
    """The page keeps its order's token for the tab: after a reload its new cash order replaces
    the unpaid one it left open; another client's cash order is refused meanwhile (409)."""
    errors = watch_page_errors(page)
    await page.goto(f"{kiosk_gateway.http_url}/kiosk?machine=M1")
    await page.get_by_test_id("tile-M1-A1").click()
    await page.get_by_test_id("pay-cash").click()
    await page.get_by_test_id("checkout").click()
    status = page.get_by_test_id("order-status")
    await expect(status).to_have_attribute("data-status", "awaiting_payment")
    first = (await kiosk_gateway.store.query("SELECT id FROM orders"))[0]["id"]

    body = {"machine_id": "M1", "items": [{"id": "M1-A1", "quantity": 1}], "payment_method": "cash"}
    async with (
        aiohttp.ClientSession(base_url=kiosk_gateway.http_url) as http,
        http.post("/api/v1/orders", json=body) as response,
    ):
        assert response.status == 409
        assert (await response.json())["error"]["code"] == "machine_busy"
    assert (await kiosk_gateway.store.get_order(first)).status.value == "awaiting_payment"

    await page.reload()
    await page.get_by_test_id("tile-M1-A2").click()
    await page.get_by_test_id("pay-cash").click()
    await page.get_by_test_id("checkout").click()
    await expect(status).to_have_attribute("data-status", "awaiting_payment")
    await expect(page.get_by_test_id("order-ref")).not_to_contain_text(first)
    assert (await kiosk_gateway.store.get_order(first)).status.value == "cancelled"
    rows = await kiosk_gateway.store.query("SELECT cancel_reason FROM orders WHERE id = ?", [first])
    assert rows == [{"cancel_reason": "superseded"}]
    # And its Cancel button still holds the new order's token.
    await page.get_by_test_id("cancel-order").click()
    await expect(status).to_have_attribute("data-status", "cancelled")
    assert errors == []
