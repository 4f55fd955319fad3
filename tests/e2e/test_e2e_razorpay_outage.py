"""Razorpay down, end to end: the cloud's provider breaker and the gateway's payments breaker
open, the kiosk stops offering UPI and refuses it at once with nothing charged, cash still vends;
once the provider is back a half-open probe closes both and UPI works again."""

from typing import Any

from e2e_money import MoneySite
from polling import wait_for


async def _refused(money: MoneySite, status: int, envelope: dict[str, Any]) -> str:
    assert status == 503, envelope
    error = envelope["error"]
    assert error["code"] == "payment_unavailable", error
    assert "Nothing was charged" in error["message"] and "cash" in error["message"], error
    return str(error["message"])


async def test_provider_down_opens_the_breakers_cash_still_sells_and_a_probe_brings_upi_back(
    upi_site: MoneySite,
) -> None:
    money = upi_site
    lobby = money.machines[0]
    assert lobby.device is not None
    money.rzp.set_faults("qr_create", "error_503")  # until cleared

    # Two UPI orders meet the outage: each one reaches Razorpay, fails, and is cancelled.
    for _ in range(2):
        await _refused(money, *await money.create_order(lobby, {"A1": 1}, "upi"))
    assert [f["fired"] for f in money.rzp.faults] == [2]
    assert (await money.cloud_breaker())["state"] == "open"
    assert (await money.gateway_breaker())["state"] == "open"

    # The kiosk is told before the customer picks UPI, and a UPI order is refused at once
    # without asking the cloud (Razorpay saw no third call).
    upi = (await money.methods(lobby))["upi"]
    assert (upi["available"], upi["reason"]) == (False, "payment_service_unavailable"), upi
    assert "cash" in upi["message"]
    await _refused(money, *await money.create_order(lobby, {"A1": 1}, "upi"))
    assert [f["fired"] for f in money.rzp.faults] == [2]
    refused = await money.site.gateway.store.query("SELECT status FROM orders")
    assert [r["status"] for r in refused] == ["cancelled"] * 3  # stock released, nothing owed

    cash = await money.site.order(lobby, {"A2": 1}, "cash")
    await lobby.device.sim("coin", amount=3500)
    done = await money.site.finished(cash["id"])
    assert done["status"] == "completed", done
    assert lobby.device.motor_runs() == 1

    # Razorpay recovers. The cloud's breaker lets a probe through after its recovery time; the
    # gateway's after its own (its clock is moved on rather than waited for).
    money.rzp.clear_faults()

    async def cloud_probing() -> bool:
        return (await money.cloud_breaker())["state"] == "half_open"

    await wait_for(cloud_probing, within=10)
    money.breaker_clock.step(31.0)
    await money.upi_offered(lobby)
    assert (await money.gateway_breaker())["state"] == "half_open"

    order = await money.upi_order(lobby, {"A1": 1})  # the probe, through both breakers
    assert (await money.gateway_breaker())["state"] == "closed"
    assert (await money.cloud_breaker())["state"] == "closed"
    money.rzp.pay(order["payment"]["qr_code_id"])
    done = await money.site.finished(order["id"])
    assert done["status"] == "completed", done
    assert lobby.device.motor_runs() == 2
    assert await money.site.kiosk_catalog(lobby) == {"A1": 4, "A2": 2}
    payments = await money.cloud_payments(order["id"])
    assert [(p["status"], p["amount"]) for p in payments] == [("captured", 2000)]
