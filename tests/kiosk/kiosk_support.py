"""Helpers for the kiosk page tests: the site the gateway is loaded with, settings, polling."""

from pathlib import Path

from standalone_site import Catalog, MachineCreds, machine_state

from contracts.sync import MachineState, StateResponse
from edge.app import Gateway
from edge.settings import GatewaySettings

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
