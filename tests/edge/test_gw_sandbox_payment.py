"""Sandbox payments through the ``PaymentsPort`` (the cloud link's role): the order waits for
the payment update, then dispenses. The cloud itself is replaced by a port double here; the
end-to-end tests run the real cloud."""

from pathlib import Path

import aiohttp
from gw_device_double import DeviceDouble
from gw_support import PaymentsDouble, gateway_settings, load_site, order_status
from polling import wait_for
from standalone_site import MachineCreds

from contracts.sync import PaymentUpdate
from edge.app import Gateway


async def test_sandbox_order_is_paid_by_update_then_dispensed(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    payments = PaymentsDouble()
    async with Gateway(gateway_settings(tmp_path / "gw"), payments=payments) as gw:
        await load_site(gw, creds)
        m1 = creds["M1"]
        async with (
            DeviceDouble(m1.id, m1.secret, m1.command_key, gw.mqtt_port) as dev,
            aiohttp.ClientSession(base_url=gw.http_url) as http,
        ):
            body = {
                "machine_id": "M1",
                "items": [{"id": "M1-A1", "quantity": 2}],
                "payment_method": "sandbox",
            }
            async with http.post("/api/v1/orders", json=body) as response:
                assert response.status == 201
                order = (await response.json())["data"]
            payment = order["payment"]
            assert (payment["payment_id"], payment["qr_payload"]) == ("pay_1", "upi://pay?am=4000")
            assert payments.requests[0].idempotency_key == order["id"]
            assert order["status"] == "awaiting_payment"
            update = PaymentUpdate(
                payment_id="pay_1",
                order_id=order["id"],
                machine_id="M1",
                status="captured",
                amount=4000,
                currency="INR",
                provider="sandbox",
            )
            await gw.store.apply_payment_update("chan-1", update)

            async def completed() -> bool:
                return await order_status(gw, order["id"]) == "completed"

            await wait_for(completed, within=15)
            assert len(dev.motor_runs) == 2
            await gw.store.apply_payment_update("chan-1", update)  # replayed channel message
            assert len(dev.motor_runs) == 2

            payments.down = True
            async with http.post("/api/v1/orders", json=body) as response:
                assert response.status == 503
            assert await gw.store.stock("M1-A1") == (3, 0)
