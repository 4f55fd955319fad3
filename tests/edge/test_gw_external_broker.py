"""The gateway on an external Mosquitto (``external_broker_url``) with the generated ACL."""

from pathlib import Path

import aiohttp
from brokers import Mosquitto
from gw_device_double import DeviceDouble
from gw_support import (
    MachineCreds,
    gateway_settings,
    load_site,
    order_status,
)
from polling import wait_for

from edge.app import Gateway


async def test_cash_vend_through_mosquitto(
    tmp_path: Path, creds: dict[str, MachineCreds], mosquitto: Mosquitto
) -> None:
    settings = gateway_settings(
        tmp_path / "gw",
        external_broker_url=mosquitto.url,
        gateway_mqtt_password=mosquitto.gateway_password,
    )
    async with Gateway(settings) as gw:
        await load_site(gw, creds)
        m1 = creds["M1"]
        async with DeviceDouble(m1.id, m1.secret, m1.command_key, gw.mqtt_port) as dev:
            # The ACL drops a forged credit for another machine.
            await dev.publish_anywhere(
                "devices/M2/events/cash", b'{"id":"forged0001","amount":100000,"ts":1}'
            )
            async with aiohttp.ClientSession(base_url=gw.http_url) as http:
                body = {
                    "machine_id": "M1",
                    "items": [{"id": "M1-A1", "quantity": 1}],
                    "payment_method": "cash",
                }
                async with http.post("/api/v1/orders", json=body) as response:
                    order_id = (await response.json())["data"]["id"]
            await dev.insert_coin(2000)

            async def completed() -> bool:
                return await order_status(gw, order_id) == "completed"

            await wait_for(completed, within=15)
            assert len(dev.motor_runs) == 1
        credits = await gw.store.query("SELECT machine_id FROM cash_credits")
        assert credits == [{"machine_id": "M1"}]
        health = await gw.health()
        assert health["broker"]["mode"] == "external" and health["status"] == "ok"
