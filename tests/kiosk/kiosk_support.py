"""Helpers for the kiosk page tests: the site the gateway is loaded with, settings, polling."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from polling import wait_for
from standalone_site import Catalog, MachineCreds, machine_state

from contracts.sync import MachineState, StateResponse
from edge.app import Gateway
from edge.settings import GatewaySettings
from tools.virtual_esp32 import VirtualDevice

# slot -> (name, category, price in paise, quantity)
KIOSK_CATALOG: Catalog = {
    "A1": ("Masala Chips", "snacks", 2000, 5),
    "A2": ("Mango Juice", "drinks", 3550, 2),
    "B1": ("Choco Bar", "sweets", 1250, 0),
}


def kiosk_machine(machine_id: str, creds: MachineCreds, catalog: Catalog) -> MachineState:
    return machine_state(
        machine_id, creds, catalog, name=f"Lobby {machine_id}", location="Ground floor"
    )


def kiosk_gateway_settings(data_dir: Path) -> GatewaySettings:
    return GatewaySettings(
        data_dir=data_dir,
        http_port=0,
        mqtt_port=0,
        zeroconf_enabled=False,
        dispense_resend_s=0.5,
        dispense_give_up_s=5.0,
        dispense_command_ttl_s=4,  # must expire before the give-up
        engine_tick_s=0.2,
    )


async def load_kiosk_site(gateway: Gateway, creds: dict[str, MachineCreds]) -> None:
    await gateway.store.apply_state(
        StateResponse(
            cursor=1,
            machines=[
                kiosk_machine("M1", creds["M1"], KIOSK_CATALOG),
                kiosk_machine("M2", creds["M2"], {"A1": ("Masala Chips", "snacks", 2000, 3)}),
            ],
        )
    )


@contextlib.asynccontextmanager
async def m1_firmware(
    gateway: Gateway, m1: MachineCreds, flash: Path
) -> AsyncIterator[VirtualDevice]:
    """The real firmware for M1 in the MicroPython unix port, online at ``gateway``."""
    config: dict[str, object] = {
        "machine_id": "M1",
        "mqtt_host": "127.0.0.1",
        "mqtt_port": gateway.mqtt_port,
        "mqtt_password": m1.secret,
        "command_key": m1.command_key,
        "sim_slots": {"A1": 5, "A2": 2},
        "motor_ms": 50,
        "drop_timeout_ms": 300,
        "resend_interval_s": 1,
    }
    await asyncio.to_thread(VirtualDevice.install, flash, config)
    async with VirtualDevice(flash) as dev:
        await dev.wait_online(timeout=20)
        yield dev

    # amqtt's shutdown can hang when it races a client's disconnect, so the gateway is only
    # stopped once it has seen the device go.
    async def offline() -> bool:
        return (await gateway.store.device_counts())["online"] == 0

    await wait_for(offline, within=10)
