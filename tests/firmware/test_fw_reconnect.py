"""The broker goes away and comes back: the device reconnects on its own (one supervisor,
capped jittered backoff), announces itself again and re-sends what was never acked."""

from pathlib import Path

from fw_support import (
    BrokerInfo,
    device_key,
    device_password,
    open_gateway,
    run_mosquitto,
)

from contracts import topics
from contracts.device_messages import Presence
from tools.virtual_esp32 import VirtualDevice


async def test_device_reconnects_and_resends_after_broker_restart(tmp_path: Path) -> None:
    counters: dict[str, int] = {}
    with run_mosquitto(tmp_path, persist=True) as port:
        broker = BrokerInfo("mosquitto", "127.0.0.1", port)
        flash = tmp_path / "flash"
        VirtualDevice.install(
            flash,
            {
                "machine_id": "VM1",
                "mqtt_port": port,
                "mqtt_password": device_password("VM1"),
                "command_key": device_key("VM1").hex(),
                "sim_slots": {"A1": 3},
                "motor_ms": 20,
                "drop_timeout_ms": 200,
                "resend_interval_s": 30,  # so a re-send after the restart is the reconnect's
                "backoff_min_ms": 100,
                "backoff_max_ms": 800,
            },
        )
        device = VirtualDevice(flash)
        await device.start()
        try:
            await device.wait_online()
            async with open_gateway(broker, counters, clean=False) as gateway:
                cmd_id, payload = gateway.command("VM1")
                await gateway.send("VM1", payload)
                await gateway.wait_message("VM1", topics.DISPENSE_RESULT, id=cmd_id)
            down_from = len(device.output_lines)
        except BaseException:
            await device.stop()
            raise
    try:
        await device.wait_output(r"^LINK down", start=down_from)
        await device.wait_output(r"^LINK connect failed", start=down_from)
        with run_mosquitto(tmp_path, port, persist=True) as same_port:
            broker = BrokerInfo("mosquitto", "127.0.0.1", same_port)
            # the device may reconnect before this gateway does: its persistent session (saved
            # by the broker at shutdown) queues what the device sends meanwhile
            async with open_gateway(broker, counters, clean=False) as gateway:
                await device.wait_output(r"^LINK ready$", start=down_from)
                again = await gateway.wait_message("VM1", topics.DISPENSE_RESULT, id=cmd_id)
                assert again.json()["result"] == "ok"
                online = await gateway.wait_message("VM1", topics.PRESENCE, online=True)
                assert Presence.model_validate_json(online.payload).boot == 1
                await gateway.ack("VM1", [cmd_id])
                await device.wait_output(r"^EVENTS acked 1 pending 0$", start=down_from)
    finally:
        await device.stop()
    assert device.motor_runs() == 1
