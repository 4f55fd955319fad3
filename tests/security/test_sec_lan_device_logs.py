"""A machine's MQTT password is enough to publish on its ``logs`` topic: it is in a stolen
device's flash, and MQTT on the site LAN is plain text, so anyone who sniffs a CONNECT has it.
The gateway wrote every device log line into its own log as sent: up to 1 KiB each, as fast as
the sender liked (a disk filler), and with newlines kept, so a sender could add lines that look
like the gateway's own, e.g. a cash credit that never happened. Now control characters are
replaced and each machine gets a small budget of log lines a minute; the rest are counted and
dropped. Real gateway, real amqtt broker.
"""

import logging
from pathlib import Path

import pytest
from sec_device_support import Site, attacker, creds, signed, wait_for
from standalone_site import MachineCreds

from contracts import topics
from contracts.device_messages import DeviceLog

__all__ = ["creds"]

FORGED_LINE = (
    "boot\n2026-11-29 16:00:00,000 INFO edge.devices.link: device M2 [info] cash credit 100000"
)


async def test_device_logs_cannot_forge_gateway_lines_or_fill_its_disk(
    tmp_path: Path, creds: dict[str, MachineCreds], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    site = Site(tmp_path / "gw", creds)
    m1 = creds["M1"]
    async with site.running() as gateway, attacker(gateway.mqtt_port, m1) as evil:
        for n in range(300):
            text = FORGED_LINE if n == 0 else f"{n:04d} " + "x" * 1000
            await evil.publish(topics.LOGS, DeviceLog(msg=text).model_dump_json().encode())
        for _ in range(100):  # and malformed telemetry, each logged as a warning before
            await evil.publish(topics.HEALTH, b'{"fw": "\\n"}')
        # a money event after the flood is still handled
        credit = {"id": "f" * 32, "amount": 100, "currency": "INR", "ts": 1}
        await evil.publish(topics.CASH_CREDIT, signed(m1, 1, credit))
        await evil.acked("f" * 32)

        def dropped() -> float:
            value = gateway.metrics.registry.get_sample_value(
                "gateway_mqtt_rejected_total", {"reason": "log_rate"}
            )
            return value or 0.0

        async def flood_counted() -> bool:
            return dropped() > 0

        await wait_for(flood_counted)
    lines = [r.getMessage() for r in caplog.records if r.name == "edge.devices.link"]
    device_lines = [line for line in lines if line.startswith("device M1 ")]
    assert not [line for line in device_lines if "\n" in line or "\r" in line]
    assert any("cash credit 100000" in line for line in device_lines)  # kept, but on one line
    assert len(device_lines) <= 61, len(device_lines)
    assert len(device_lines) + dropped() == 300
    assert sum(line.startswith("dropped message on devices/M1/") for line in lines) == 1
