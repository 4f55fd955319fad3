"""Fixtures for the firmware tests: real brokers, a signing test gateway, virtual devices."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from brokers import anonymous_amqtt
from fw_support import (
    BrokerInfo,
    DeviceFactory,
    SigningGateway,
    device_key,
    device_password,
    open_gateway,
    run_mosquitto,
)

from tools.virtual_esp32 import VirtualDevice


@pytest.fixture(params=["mosquitto", "amqtt"])
async def broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BrokerInfo]:
    if request.param == "mosquitto":
        with run_mosquitto(tmp_path) as port:
            yield BrokerInfo("mosquitto", "127.0.0.1", port)
    else:
        async with anonymous_amqtt() as port:
            yield BrokerInfo("amqtt", "127.0.0.1", port)


@pytest.fixture
async def gateway(broker: BrokerInfo) -> AsyncIterator[SigningGateway]:
    async with open_gateway(broker) as gw:
        yield gw


@pytest.fixture
async def make_device(broker: BrokerInfo, tmp_path: Path) -> AsyncIterator[DeviceFactory]:
    """make_device(machine_id, **config overrides) -> an installed, not yet started device."""
    made: list[VirtualDevice] = []

    def factory(
        machine_id: str = "VM1", heapsize: str = "96K", **overrides: object
    ) -> VirtualDevice:
        config: dict[str, object] = {
            "machine_id": machine_id,
            "mqtt_host": broker.host,
            "mqtt_port": broker.port,
            "mqtt_password": device_password(machine_id),
            "command_key": device_key(machine_id).hex(),
            "sim_slots": {"A1": 5, "A2": 5},
            "motor_ms": 20,
            "drop_timeout_ms": 200,
            "resend_interval_s": 1,
            "health_interval_s": 30,
            "mqtt_keepalive_s": 10,
            "backoff_min_ms": 100,
            "backoff_max_ms": 1000,
        } | overrides
        flash = tmp_path / f"flash-{machine_id}"
        VirtualDevice.install(flash, config)
        device = VirtualDevice(flash, heapsize=heapsize)
        made.append(device)
        return device

    try:
        yield factory
    finally:
        for device in made:
            await device.stop()
