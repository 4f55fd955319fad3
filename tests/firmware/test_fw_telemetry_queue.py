"""Offline: telemetry is bounded (oldest dropped, counted in health); money is never dropped."""

from pathlib import Path

from fw_support import (
    BrokerInfo,
    device_key,
    device_password,
    free_port,
    open_gateway,
    run_mosquitto,
)

from contracts import topics
from contracts.device_messages import CashCredit, Health
from tools.virtual_esp32 import VirtualDevice

COINS = 12
QUEUE = 4


async def test_offline_telemetry_drops_oldest_but_cash_is_kept(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here until the broker starts below
    flash = tmp_path / "flash"
    VirtualDevice.install(
        flash,
        {
            "machine_id": "VM1",
            "mqtt_port": port,
            "mqtt_password": device_password("VM1"),
            "command_key": device_key("VM1").hex(),
            "sim_slots": {"A1": 3},
            "telemetry_queue": QUEUE,
            "health_interval_s": 1,
            "resend_interval_s": 1,
            "backoff_min_ms": 100,
            "backoff_max_ms": 400,
        },
    )
    async with VirtualDevice(flash) as device:
        for n in range(COINS):
            await device.sim("coin", amount=100 + n)
        await device.wait_output(r"^LOG info cash credit 111 ")
        assert (await device.sim("state"))["coins_pending"] == 0
        with run_mosquitto(tmp_path, port) as same_port:
            broker = BrokerInfo("mosquitto", "127.0.0.1", same_port)
            async with open_gateway(broker) as gateway:

                def health_after_connect(m: object) -> bool:
                    return bool(gateway.messages("VM1", topics.HEALTH))

                await gateway.wait_for(health_after_connect)
                health = Health.model_validate_json(
                    gateway.messages("VM1", topics.HEALTH)[0].payload
                )
                # boot log + 12 cash logs went into a queue of 4 while offline
                assert health.dropped >= 1 + COINS - QUEUE

                def all_cash(m: object) -> bool:
                    amounts = {
                        CashCredit.model_validate_json(c.body).amount
                        for c in gateway.messages("VM1", topics.CASH_CREDIT)
                    }
                    return amounts == {100 + n for n in range(COINS)}

                await gateway.wait_for(all_cash)
