"""The gateway with the REAL firmware (MicroPython unix port, 96K heap, simulated HAL)."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from gw_support import firmware_m1, order_status
from polling import wait_for
from standalone_site import MachineCreds

from edge.app import Gateway
from tools.virtual_esp32 import VirtualDevice


@pytest.fixture
async def firmware(
    tmp_path: Path, gateway: Gateway, creds: dict[str, MachineCreds]
) -> AsyncIterator[VirtualDevice]:
    async with firmware_m1(tmp_path / "flash-M1", gateway.mqtt_port, creds["M1"]) as dev:
        yield dev


async def cash_order(gateway: Gateway, items: list[dict[str, Any]]) -> str:
    async with (
        aiohttp.ClientSession(base_url=gateway.http_url) as http,
        http.post(
            "/api/v1/orders",
            json={"machine_id": "M1", "items": items, "payment_method": "cash"},
        ) as response,
    ):
        assert response.status == 201, await response.text()
        return (await response.json())["data"]["id"]  # type: ignore[no-any-return]


async def finished(gateway: Gateway, order_id: str) -> str:
    async def terminal() -> str | None:
        status = await order_status(gateway, order_id)
        return status if status in {"completed", "partially_completed", "failed"} else None

    return await wait_for(terminal, within=30)  # type: ignore[no-any-return]


async def test_cash_vend_with_real_firmware(gateway: Gateway, firmware: VirtualDevice) -> None:
    async def online() -> bool:
        return (await gateway.store.device_counts())["online"] == 1

    await wait_for(online)
    order_id = await cash_order(gateway, [{"id": "M1-A1", "quantity": 2}])
    await firmware.sim("coin", amount=2000)
    await firmware.sim("coin", amount=2000)
    assert await finished(gateway, order_id) == "completed"
    order = await gateway.store.get_order(order_id)
    assert order.items[0].dispensed == 2
    assert firmware.motor_runs() == 2
    assert await gateway.store.stock("M1-A1") == (3, 0)


async def test_jam_with_real_firmware(gateway: Gateway, firmware: VirtualDevice) -> None:
    await firmware.sim("jam", slot="A2", on=True)
    order_id = await cash_order(gateway, [{"id": "M1-A2", "quantity": 1}])
    await firmware.sim("coin", amount=2000)
    assert await finished(gateway, order_id) == "failed"
    order = await gateway.store.get_order(order_id)
    assert (order.items[0].failed, order.items[0].dispense_status.value) == (1, "failed")
    # No coin return: the jammed unit's cash is machine credit for the next order.
    assert order.credit_amount == 2000 and order.machine_credit == 2000
    assert await gateway.store.stock("M1-A2") == (2, 0)


async def test_power_cut_mid_dispense_is_unknown_and_never_rerun(
    gateway: Gateway, firmware: VirtualDevice
) -> None:
    await firmware.sim("hold")
    order_id = await cash_order(gateway, [{"id": "M1-A1", "quantity": 1}])
    await firmware.sim("coin", amount=2000)
    held = await firmware.wait_output(r"^SIM_HOLD motor (\S+)$", 20)
    cmd_id = held.group(1)
    await firmware.kill()  # power cut while the motor runs
    await firmware.start()
    assert await finished(gateway, order_id) == "failed"
    order = await gateway.store.get_order(order_id)
    assert order.credit_amount == 2000  # the default policy refunds unknown units
    assert (order.items[0].unknown, order.items[0].dispense_status.value) == (1, "unknown")
    rows = await gateway.store.query("SELECT cmd_id, result, reason FROM dispense_commands")
    assert [(r["cmd_id"], r["result"]) for r in rows] == [(cmd_id, "unknown")]
    assert rows[0]["reason"] != "no_result"  # the firmware reported it, not a gateway timeout
    assert firmware.motor_runs(cmd_id) <= 1
    assert await gateway.store.stock("M1-A1") == (4, 0)
