"""Helpers shared by the gateway tests (machines, settings, polling)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.sync import CatalogItemState, MachineState, StateResponse
from edge.app import Gateway
from edge.settings import GatewaySettings


@dataclass
class Mosquitto:
    url: str
    gateway_password: str


@dataclass
class MachineCreds:
    id: str
    secret: str
    command_key: str
    secret_hash: str


def make_machine(
    machine_id: str,
    creds: MachineCreds,
    *,
    stock: dict[str, int],
    version: int = 1,
    stock_rev: int = 0,
    price: int = 2000,
    status: str = "active",
) -> MachineState:
    return MachineState(
        id=machine_id,
        tenant_id="t1",
        site_id="s1",
        name=f"Machine {machine_id}",
        location="Lobby",
        status=status,  # type: ignore[arg-type]
        mqtt_secret_hash=creds.secret_hash,
        command_key=creds.command_key,
        currency="INR",
        catalog=[
            CatalogItemState(
                id=f"{machine_id}-{slot}",
                slot=slot,
                name=f"Snack {slot}",
                category="snacks",
                price=price,
                currency="INR",
                quantity=quantity,
                stock_rev=stock_rev,
            )
            for slot, quantity in stock.items()
        ],
        version=version,
    )


def gateway_settings(data_dir: Path, **overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "http_port": 0,
        "mqtt_port": 0,
        "zeroconf_enabled": False,
        "dispense_resend_s": 0.5,
        "dispense_give_up_s": 3.0,
        "dispense_command_ttl_s": 2,  # must expire before the give-up
        "engine_tick_s": 0.2,
    }
    values.update(overrides)
    return GatewaySettings(**values)


async def load_site(gateway: Gateway, creds: dict[str, MachineCreds]) -> None:
    await gateway.store.apply_state(
        StateResponse(
            cursor=1,
            machines=[
                make_machine("M1", creds["M1"], stock={"A1": 5, "A2": 2, "B1": 0}),
                make_machine("M2", creds["M2"], stock={"A1": 3}),
            ],
        )
    )


async def order_status(gateway: Gateway, order_id: str) -> str:
    return (await gateway.store.get_order(order_id)).status.value
