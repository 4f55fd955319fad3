"""A sandbox-paid and a cash-paid order, kiosk to motor to cloud, on real parts."""

from collections import Counter

from e2e_site import Site


async def test_sandbox_and_cash_orders_complete_and_reach_the_cloud_once(site: Site) -> None:
    lobby, canteen = site.machines
    assert lobby.device is not None and canteen.device is not None

    sandbox = await site.order(lobby, {"A1": 2}, "sandbox", key="e2e-sandbox-0001")
    assert sandbox["status"] == "awaiting_payment"
    assert sandbox["payment"]["qr_payload"].startswith("upi://pay?")
    assert sandbox["total_amount"] == 4000

    cash = await site.order(canteen, {"A2": 1}, "cash", key="e2e-cash-0001")
    await canteen.device.sim("coin", amount=2000)
    await canteen.device.sim("coin", amount=1500)

    sandbox_done = await site.finished(sandbox["id"])
    cash_done = await site.finished(cash["id"])
    assert sandbox_done["status"] == "completed", sandbox_done
    assert cash_done["status"] == "completed", cash_done
    assert sandbox_done["items"][0]["dispensed"] == 2
    assert cash_done["paid_amount"] == 3500

    # The motor ran once per unit, on the right machine.
    assert lobby.device.motor_runs() == 2
    assert canteen.device.motor_runs() == 1
    assert await site.kiosk_catalog(lobby) == {"A1": 3, "A2": 3}
    assert await site.kiosk_catalog(canteen) == {"A1": 5, "A2": 2}

    # Retrying the kiosk request with the same key gives the same order, not a new one.
    again = await site.order(lobby, {"A1": 2}, "sandbox", key="e2e-sandbox-0001")
    assert again["id"] == sandbox["id"]

    cloud_sandbox = await site.synced(sandbox["id"], "completed")
    cloud_cash = await site.synced(cash["id"], "completed")
    assert cloud_sandbox["total_amount"] == 4000 and cloud_sandbox["currency"] == "INR"
    assert cloud_cash["payment_method"] == "cash"

    orders = await site.cloud_orders()
    assert Counter(o["id"] for o in orders) == {sandbox["id"]: 1, cash["id"]: 1}
    payments = await site.admin.request("GET", f"/payments?order_id={sandbox['id']}")
    assert [(p["status"], p["amount"]) for p in payments] == [("captured", 4000)]
