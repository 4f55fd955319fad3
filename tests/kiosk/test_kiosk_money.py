"""Every money message on the kiosk page is true: headless Chromium against a real gateway (and
the real firmware where something must come out). Cash that is not spent stays on the machine
as credit and the page says so; a refund is promised only when the order has one, in words
that match its state; when UPI is down the page says so and sells for cash."""

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kiosk_support import KIOSK_CATALOG, kiosk_gateway_settings, kiosk_machine, m1_firmware
from playwright.async_api import Page, expect
from polling import wait_for
from standalone_site import MachineCreds
from test_kiosk_page import ORDER_END_MS, screenshot_dir, watch_page_errors
from upi_payments_double import UpiPayments

from contracts.device_messages import CashCredit
from contracts.orders import RefundStatus
from contracts.sync import MoneyPolicy, PaymentUpdate, RefundUpdate, StateResponse
from edge.app import Gateway
from tools.virtual_esp32 import VirtualDevice


async def load(gw: Gateway, creds: dict[str, MachineCreds], policy: MoneyPolicy) -> None:
    machines = [
        kiosk_machine("M1", creds["M1"], KIOSK_CATALOG),
        kiosk_machine("M2", creds["M2"], {"A1": ("Masala Chips", "snacks", 2000, 3)}),
    ]
    await gw.store.apply_state(
        StateResponse(
            cursor=1, machines=[m.model_copy(update={"money_policy": policy}) for m in machines]
        )
    )


async def coins(gw: Gateway, amount: int) -> None:
    """Cash the machine counted, as its signed message would record it."""
    credit = CashCredit(id=os.urandom(16).hex(), amount=amount, ts=int(time.time()))
    await gw.store.record_cash_credit("M1", credit)


async def pick(page: Page, *tiles: str, method: str = "pay-cash") -> None:
    for tile in tiles:
        await page.get_by_test_id(f"tile-{tile}").click()
    await page.get_by_test_id(method).click()
    await page.get_by_test_id("checkout").click()


async def assert_no_refund_words(page: Page) -> None:
    body = await page.get_by_test_id("order-screen").inner_text()
    assert "refund" not in body.lower(), body


@pytest.fixture
async def upi_site(
    tmp_path: Path, kiosk_creds: dict[str, MachineCreds]
) -> AsyncIterator[tuple[Gateway, UpiPayments]]:
    """A gateway whose tenant has UPI (through the cloud's payment role) and disables a slot
    after one failed dispense."""
    payments = UpiPayments()
    settings = kiosk_gateway_settings(tmp_path / "gw").model_copy(
        update={"payments_breaker_failures": 1}
    )
    async with Gateway(settings, payments=payments) as gw:
        await load(gw, kiosk_creds, MoneyPolicy(upi_enabled=True, disable_slot_after_failures=1))
        yield gw, payments


async def test_cancel_with_coins_inserted_keeps_them_as_credit(
    page: Page, kiosk_gateway: Gateway, tmp_path: Path
) -> None:
    errors = watch_page_errors(page)
    await page.goto(f"{kiosk_gateway.http_url}/kiosk?machine=M1")
    await page.get_by_test_id("tile-M1-A1").click()
    await pick(page, "M1-A1")  # two Masala Chips: ₹40.00
    await expect(page.get_by_test_id("cash-prompt")).to_have_text("Insert ₹40.00")
    await coins(kiosk_gateway, 2000)
    await expect(page.get_by_test_id("cash-paid")).to_have_text("₹20.00")

    await page.get_by_test_id("cancel-order").click()
    status = page.get_by_test_id("order-status")
    await expect(status).to_have_attribute("data-status", "cancelled")
    message = page.get_by_test_id("order-message")
    await expect(message).to_have_text(
        "Order cancelled. ₹20.00 is kept as credit on this machine for your next purchase."
    )
    await expect(message).not_to_contain_text("Nothing was charged")
    await expect(page.get_by_test_id("order-credit")).to_contain_text(
        "Credit on this machine: ₹20.00"
    )
    await assert_no_refund_words(page)
    await page.screenshot(path=str(screenshot_dir(tmp_path) / "kiosk-cancel-credit.png"))

    # The next customer sees the credit before choosing.
    await page.get_by_test_id("new-order").click()
    await expect(page.get_by_test_id("shop-credit")).to_contain_text(
        "Credit on this machine: ₹20.00"
    )
    assert errors == []


async def test_overpaid_cash_is_kept_as_credit_and_said(
    page: Page, kiosk_gateway: Gateway, kiosk_device: VirtualDevice
) -> None:
    errors = watch_page_errors(page)

    async def online() -> bool:
        return (await kiosk_gateway.store.device_counts())["online"] == 1

    await wait_for(online)
    await page.goto(f"{kiosk_gateway.http_url}/kiosk?machine=M1")
    await pick(page, "M1-A1")  # ₹20.00
    await expect(page.get_by_test_id("cash-prompt")).to_have_text("Insert ₹20.00")
    await kiosk_device.sim("coin", amount=5000)

    status = page.get_by_test_id("order-status")
    await expect(status).to_have_attribute("data-status", "completed", timeout=ORDER_END_MS)
    await expect(page.get_by_test_id("order-message")).to_have_text("Enjoy!")
    await expect(page.get_by_test_id("money-note")).to_have_text(
        "You paid ₹30.00 more than the total: it is kept as credit on this machine for your "
        "next purchase."
    )
    await expect(page.get_by_test_id("order-credit")).to_contain_text("₹30.00")
    await assert_no_refund_words(page)
    assert kiosk_device.motor_runs() == 1
    assert errors == []


async def test_cash_units_not_dispensed_become_credit_not_a_refund(
    page: Page, kiosk_gateway: Gateway, kiosk_device: VirtualDevice
) -> None:
    errors = watch_page_errors(page)

    async def online() -> bool:
        return (await kiosk_gateway.store.device_counts())["online"] == 1

    await wait_for(online)
    await kiosk_device.sim("jam", slot="A2", on=True)
    await page.goto(f"{kiosk_gateway.http_url}/kiosk?machine=M1")
    await pick(page, "M1-A1", "M1-A2")  # ₹20.00 + ₹35.50
    await expect(page.get_by_test_id("cash-prompt")).to_have_text("Insert ₹55.50")
    await kiosk_device.sim("coin", amount=5550)

    status = page.get_by_test_id("order-status")
    await expect(status).to_have_attribute(
        "data-status", "partially_completed", timeout=ORDER_END_MS
    )
    await expect(status).to_have_text("Partly completed")
    await expect(page.get_by_test_id("order-message")).to_have_text(
        "Some items could not be dispensed. ₹35.50 is kept as credit on this machine for your "
        "next purchase."
    )
    await expect(page.get_by_test_id("order-item-M1-A2")).to_contain_text("not dispensed")
    await expect(page.get_by_test_id("order-credit")).to_contain_text("₹35.50")
    await assert_no_refund_words(page)
    assert errors == []


async def test_upi_refund_is_promised_only_once_it_exists(
    page: Page,
    upi_site: tuple[Gateway, UpiPayments],
    kiosk_creds: dict[str, MachineCreds],
    tmp_path: Path,
) -> None:
    errors = watch_page_errors(page)
    gw, payments = upi_site
    async with m1_firmware(gw, kiosk_creds["M1"], tmp_path / "flash-M1") as device:
        await device.sim("jam", slot="A2", on=True)
        await page.goto(f"{gw.http_url}/kiosk?machine=M1")
        # The tenant has UPI: its button, not the sandbox's.
        await expect(page.get_by_test_id("pay-upi")).to_be_visible()
        await expect(page.get_by_test_id("pay-sandbox")).to_be_hidden()
        await pick(page, "M1-A1", "M1-A2", method="pay-upi")

        status = page.get_by_test_id("order-status")
        await expect(status).to_have_attribute("data-status", "awaiting_payment")
        await expect(page.get_by_test_id("upi-amount")).to_have_text("₹55.50")
        await expect(page.get_by_test_id("upi-payload")).to_contain_text("upi://pay?")
        await page.wait_for_function(
            "() => { const img = document.querySelector('[data-testid=upi-qr]');"
            " return img.complete && img.naturalWidth > 100; }"
        )
        await expect(page.get_by_test_id("order-ref")).to_contain_text("UPI")
        await assert_no_refund_words(page)
        request = payments.requests[0]
        await gw.store.apply_payment_update(
            "chan-1",
            PaymentUpdate(
                payment_id="pay_1",
                order_id=request.order_id,
                machine_id="M1",
                status="captured",
                amount=5550,
                currency="INR",
                provider="razorpay",
                provider_payment_id="pay_RZP1",
            ),
        )

        await expect(status).to_have_attribute(
            "data-status", "partially_completed", timeout=ORDER_END_MS
        )
        await expect(page.get_by_test_id("order-message")).to_have_text(
            "Some items could not be dispensed."
        )
        note = page.get_by_test_id("money-note")
        await expect(note).to_have_text(
            "₹35.50 is being refunded to your UPI account (refund requested)."
        )
        await page.screenshot(path=str(screenshot_dir(tmp_path) / "kiosk-upi-refund.png"))
        order = await gw.store.get_order(request.order_id)
        [refund] = order.refunds
        assert (refund.amount, refund.status) == (3550, RefundStatus.PENDING)

        # The provider pays it back: the page, still showing the order, follows.
        await gw.store.apply_refund_update(
            "chan-2",
            RefundUpdate(
                refund_id=refund.refund_id,
                order_id=order.id,
                payment_id="pay_1",
                amount=3550,
                currency="INR",
                status=RefundStatus.REFUNDED,
                provider_refund_id="rfnd_1",
            ),
        )
        await expect(note).to_have_text("₹35.50 has been refunded to your UPI account.")

        # One failed dispense disabled the jammed slot (this tenant's policy): out of service.
        await page.get_by_test_id("new-order").click()
        juice = page.get_by_test_id("tile-M1-A2")
        await expect(juice).to_contain_text("Out of service")
        await expect(juice).to_be_disabled()
    assert errors == []


async def test_upi_down_says_so_and_sells_for_cash(
    page: Page, upi_site: tuple[Gateway, UpiPayments], tmp_path: Path
) -> None:
    errors = watch_page_errors(page)
    gw, payments = upi_site
    payments.mode = "down"
    await page.goto(f"{gw.http_url}/kiosk?machine=M1")
    upi = page.get_by_test_id("pay-upi")
    await expect(upi).to_be_visible()  # nothing has failed yet
    await expect(page.get_by_test_id("upi-unavailable")).to_be_hidden()
    await pick(page, "M1-A1", method="pay-upi")

    # The cloud cannot be reached: the breaker opens and the page is told to sell for cash.
    await expect(page.get_by_test_id("error-message")).to_have_text(
        "UPI payment is not available right now. Nothing was charged. Please pay with cash."
    )
    await expect(upi).to_be_hidden()
    note = page.get_by_test_id("upi-unavailable")
    await expect(note).to_contain_text("UPI is unavailable right now")
    await expect(note).to_contain_text("pay with cash")
    await page.screenshot(path=str(screenshot_dir(tmp_path) / "kiosk-upi-down.png"))
    assert gw.engine.payments_breaker.state == "open"

    # A later UPI order never reaches the cloud; the cart's cash button still sells.
    await page.get_by_test_id("error-dismiss").click()
    await expect(page.get_by_test_id("cart-qty-M1-A1")).to_have_text("1")
    await page.get_by_test_id("pay-cash").click()
    await page.get_by_test_id("checkout").click()
    status = page.get_by_test_id("order-status")
    await expect(status).to_have_attribute("data-status", "awaiting_payment")
    await expect(page.get_by_test_id("cash-prompt")).to_have_text("Insert ₹20.00")
    assert payments.calls == 1
    rows: list[dict[str, Any]] = await gw.store.query(
        "SELECT payment_method, status FROM orders ORDER BY created_at"
    )
    assert rows == [
        {"payment_method": "upi", "status": "cancelled"},
        {"payment_method": "cash", "status": "awaiting_payment"},
    ]
    assert errors == []
