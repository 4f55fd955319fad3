"""Helpers shared by the gateway tests (machines, settings, polling, a payments double)."""

import contextlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import pytest
from standalone_site import MachineCreds, machine_state

from contracts.sync import MachineState, PaymentCreate, PaymentIntent, StateResponse
from edge.app import Gateway
from edge.errors import CloudUnavailable
from edge.settings import GatewaySettings
from tools.virtual_esp32 import VirtualDevice


@pytest.fixture(scope="session")
def creds() -> dict[str, MachineCreds]:
    """Credentials for machines M1 and M2 (hashed once: PBKDF2 is deliberately slow)."""
    return {machine_id: MachineCreds.new(machine_id) for machine_id in ("M1", "M2")}


def make_machine(
    machine_id: str,
    creds: MachineCreds,
    *,
    stock: dict[str, int],
    version: int = 1,
    stock_rev: int = 0,
    price: int = 2000,
    status: Literal["active", "decommissioned"] = "active",
) -> MachineState:
    catalog = {slot: (f"Snack {slot}", "snacks", price, qty) for slot, qty in stock.items()}
    return machine_state(
        machine_id, creds, catalog, name=f"Machine {machine_id}", location="Lobby",
        version=version, stock_rev=stock_rev, status=status,
    )  # fmt: skip


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


def enrolled_gateway_settings(
    root: Path, cloud_url: str, token: str, **overrides: Any
) -> GatewaySettings:
    """A gateway in ``root/gateway`` on ephemeral ports that enrols with the cloud at
    ``cloud_url`` using ``token``."""
    values: dict[str, Any] = {
        "data_dir": root / "gateway",
        "http_port": 0,
        "mqtt_port": 0,
        "zeroconf_enabled": False,
        "cloud_url": cloud_url,
        "enroll_token": token,
    }
    return GatewaySettings(**(values | overrides))


def order_body(**overrides: Any) -> dict[str, Any]:
    """A kiosk order for one M1-A1, paid in cash; ``overrides`` replace its fields."""
    body: dict[str, Any] = {
        "machine_id": "M1",
        "items": [{"id": "M1-A1", "quantity": 1}],
        "payment_method": "cash",
    }
    body.update(overrides)
    return body


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


class PaymentsDouble:
    """The cloud link's payment role (``PaymentsPort``): sandbox intents, captured by the test;
    ``down`` makes it answer like an unreachable cloud."""

    def __init__(self) -> None:
        self.requests: list[PaymentCreate] = []
        self.down = False
        self._ids = itertools.count(1)

    async def create_payment(self, request: PaymentCreate) -> PaymentIntent:
        if self.down:
            raise CloudUnavailable("cloud down")
        self.requests.append(request)
        return PaymentIntent(
            payment_id=f"pay_{next(self._ids)}",
            order_id=request.order_id,
            provider="sandbox",
            status="created",
            amount=request.amount,
            currency=request.currency,
            qr_payload=f"upi://pay?am={request.amount}",
        )


@contextlib.asynccontextmanager
async def firmware_m1(
    flash: Path, mqtt_port: int, m1: MachineCreds, *, within: float = 20
) -> AsyncIterator[VirtualDevice]:
    """The real firmware as machine M1 (slots A1: 5, A2: 2), online at the broker on
    ``mqtt_port`` within ``within`` seconds."""
    VirtualDevice.install(
        flash,
        {
            "machine_id": "M1",
            "mqtt_host": "127.0.0.1",
            "mqtt_port": mqtt_port,
            "mqtt_password": m1.secret,
            "command_key": m1.command_key,
            "sim_slots": {"A1": 5, "A2": 2},
            "motor_ms": 50,
            "drop_timeout_ms": 300,
            "resend_interval_s": 1,
        },
    )
    async with VirtualDevice(flash) as dev:
        await dev.wait_online(timeout=within)
        yield dev
