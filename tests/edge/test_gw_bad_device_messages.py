"""Malformed, oversized and unexpected payloads from an authenticated device are counted and
dropped; the gateway keeps processing what follows. Unsigned (or signed but malformed) cash and
dispense messages are refused and counted as such."""

import json

import aiohttp
from gw_device_double import DeviceDouble
from polling import wait_for
from standalone_site import MachineCreds

from contracts import topics
from edge.app import Gateway


async def metrics_text(gateway: Gateway) -> str:
    async with (
        aiohttp.ClientSession(base_url=gateway.http_url) as http,
        http.get("/metrics") as response,
    ):
        return await response.text()


async def test_bad_payloads_are_counted_and_the_link_survives(
    gateway: Gateway, creds: dict[str, MachineCreds]
) -> None:
    m1 = creds["M1"]
    async with DeviceDouble(m1.id, m1.secret, m1.command_key, gateway.mqtt_port) as dev:
        await dev.publish_raw(topics.CASH_CREDIT, b"{not json")
        await dev.publish_raw(topics.CASH_CREDIT, b'{"id":"abcdefgh12","amount":12.5,"ts":1}')
        await dev.publish_raw(topics.CASH_CREDIT, b'{"id":"abcdefgh13","amount":-5,"ts":1}')
        await dev.publish_raw(topics.HEALTH, b"\xff\xfe\x00")
        await dev.publish_raw(topics.LOGS, b'{"msg":"' + b"x" * 5000 + b'"}')
        await dev.publish_raw(topics.DISPENSE_RESULT, b"[]")
        # A well-formed result for a command the gateway never sent: unsigned, then signed.
        unknown = {
            "id": "c0ffee0000", "cmd_id": "c0ffee0000", "order_id": "o", "item_id": "i",
            "slot": "A1", "result": "ok", "ts": 1,
        }  # fmt: skip
        await dev.publish_raw(topics.DISPENSE_RESULT, json.dumps(unknown).encode())
        await dev.publish_raw(topics.DISPENSE_RESULT, dev.sign(unknown))
        # Signed by the device, but not a valid credit.
        await dev.publish_raw(topics.CASH_CREDIT, dev.sign({"id": "abcdefgh14", "amount": 1.5}))
        credit = await dev.insert_coin(500)  # and then a valid message

        async def credited() -> bool:
            rows = await gateway.store.query("SELECT id, amount FROM cash_credits")
            return rows == [{"id": credit, "amount": 500}]

        await wait_for(credited)
        text = await metrics_text(gateway)
        assert 'gateway_mqtt_rejected_total{reason="malformed"} 1.0' in text
        assert 'gateway_device_messages_refused_total{reason="unsigned"} 5.0' in text
        assert 'gateway_device_messages_refused_total{reason="malformed"} 1.0' in text
        assert 'gateway_mqtt_rejected_total{reason="oversized"} 1.0' in text
        assert 'gateway_mqtt_rejected_total{reason="unknown_command"} 1.0' in text
        assert 'gateway_mqtt_messages_total{kind="events/cash"}' in text
        assert gateway.link.connected

        async def health_ok() -> bool:
            async with (
                aiohttp.ClientSession(base_url=gateway.http_url) as http,
                http.get("/health") as response,
            ):
                return (await response.json())["data"]["status"] == "ok"

        assert await health_ok()
