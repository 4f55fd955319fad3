"""Vend flow through the real gateway (amqtt, SQLite) with a device that follows the firmware
contract (``gw_device_double``): cash, jam, lost results, restarts, at-most-once."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from gw_device_double import DeviceDouble
from gw_support import gateway_settings, load_site, order_status
from polling import wait_for
from standalone_site import MachineCreds

from contracts.signing import down_key, verify_command
from edge.app import Gateway


def device(gateway: Gateway, creds: MachineCreds, **kwargs: Any) -> DeviceDouble:
    return DeviceDouble(creds.id, creds.secret, creds.command_key, gateway.mqtt_port, **kwargs)


async def create_cash_order(
    gateway: Gateway, items: list[dict[str, Any]], token: str | None = None
) -> dict[str, Any]:
    """``token``: the order token of the unpaid cash order this one replaces."""
    headers = {"X-Order-Token": token} if token else {}
    async with aiohttp.ClientSession(base_url=gateway.http_url) as http:
        body = {"machine_id": "M1", "items": items, "payment_method": "cash"}
        async with http.post("/api/v1/orders", json=body, headers=headers) as response:
            assert response.status == 201, await response.text()
            return (await response.json())["data"]  # type: ignore[no-any-return]


async def until_status(gateway: Gateway, order_id: str, *statuses: str) -> str:
    async def reached() -> str | None:
        status = await order_status(gateway, order_id)
        return status if status in statuses else None

    return await wait_for(reached, within=15)  # type: ignore[no-any-return]


@pytest.fixture
async def m1(gateway: Gateway, creds: dict[str, MachineCreds]) -> AsyncIterator[DeviceDouble]:
    async with device(gateway, creds["M1"]) as dev:
        yield dev


async def test_cash_order_completes(gateway: Gateway, m1: DeviceDouble) -> None:
    order = await create_cash_order(gateway, [{"id": "M1-A1", "quantity": 2}])
    await m1.insert_coin(1000)
    await wait_for(lambda: _paid(gateway, order["id"], 1000))
    assert await order_status(gateway, order["id"]) == "awaiting_payment"
    credit = await m1.insert_coin(3000)
    assert await until_status(gateway, order["id"], "completed") == "completed"
    final = await gateway.store.get_order(order["id"])
    assert final.paid_amount == 4000
    assert (final.items[0].dispensed, final.items[0].dispense_status.value) == (2, "dispensed")
    assert await gateway.store.stock("M1-A1") == (3, 0)
    assert len(m1.motor_runs) == 2
    await wait_for(lambda: _acked(m1, [credit, *m1.motor_runs]))
    types = [e.type for e in await gateway.store.outbox_pending(1000)]
    assert types.count("dispense.result") == 2 and types.count("cash.credit") == 2
    # The counter grows per command and every command verifies with the machine's key.
    rows = await gateway.store.query("SELECT ctr, payload FROM dispense_commands ORDER BY ctr")
    assert len(rows) == 2 and 0 < rows[0]["ctr"] < rows[1]["ctr"]
    # A result sent again (the device did not see the ack) is acked but counted once.
    m1.acked.clear()
    await m1.answer_late(bytes(rows[0]["payload"]), "ok")
    await wait_for(lambda: _acked(m1, [m1.motor_runs[0]]))
    again = await gateway.store.get_order(order["id"])
    assert again.version == final.version and again.items[0].dispensed == 2


async def _paid(gateway: Gateway, order_id: str, amount: int) -> bool:
    return (await gateway.store.get_order(order_id)).paid_amount == amount


async def _acked(dev: DeviceDouble, ids: list[str]) -> bool:
    return set(ids) <= dev.acked


async def test_credit_before_order_pays_the_next_order(gateway: Gateway, m1: DeviceDouble) -> None:
    await m1.insert_coin(5000)
    await wait_for(lambda: _credits(gateway, 1))
    order = await create_cash_order(gateway, [{"id": "M1-A2", "quantity": 1}])
    # Only the price is taken; the rest stays machine credit for the next cash order.
    assert order["status"] == "paid" and order["paid_amount"] == 2000
    assert await gateway.store.machine_credit("M1", "INR") == 3000
    assert await until_status(gateway, order["id"], "completed") == "completed"


async def _credits(gateway: Gateway, count: int) -> bool:
    return len(await gateway.store.query("SELECT id FROM cash_credits")) == count


async def test_jam_gives_partially_completed_and_keeps_stock(
    gateway: Gateway, m1: DeviceDouble
) -> None:
    m1.jammed.add("A2")
    order = await create_cash_order(
        gateway, [{"id": "M1-A1", "quantity": 1}, {"id": "M1-A2", "quantity": 2}]
    )
    await m1.insert_coin(6000)
    assert await until_status(gateway, order["id"], "partially_completed", "completed") == (
        "partially_completed"
    )
    final = await gateway.store.get_order(order["id"])
    # The two jammed units' cash went back to the machine credit (there is no coin return).
    assert (final.credit_amount, final.machine_credit) == (4000, 4000)
    a1, a2 = final.items
    assert (a1.dispensed, a1.dispense_status.value) == (1, "dispensed")
    assert (a2.dispensed, a2.failed, a2.unknown, a2.dispense_status.value) == (0, 2, 0, "failed")
    assert await gateway.store.stock("M1-A1") == (4, 0)
    assert await gateway.store.stock("M1-A2") == (2, 0)  # still in the machine, not reserved
    results = await gateway.store.query("SELECT result, reason FROM dispense_commands ORDER BY ctr")
    assert [r["result"] for r in results] == ["ok", "failed", "failed"]


async def test_lost_result_becomes_unknown_and_is_never_resigned(
    gateway: Gateway, creds: dict[str, MachineCreds]
) -> None:
    async with device(gateway, creds["M1"], silent=True) as dev:
        order = await create_cash_order(gateway, [{"id": "M1-A1", "quantity": 1}])
        await dev.insert_coin(2000)
        assert await until_status(gateway, order["id"], "failed") == "failed"
        # Re-sent every dispense_resend_s, always the same signed bytes (one command id).
        assert len(dev.received) >= 3
        assert len(set(dev.received)) == 1
        body = verify_command(down_key(bytes.fromhex(creds["M1"].command_key)), dev.received[0])
        assert body.mid == "M1" and body.slot == "A1"
    final = await gateway.store.get_order(order["id"])
    assert (final.items[0].unknown, final.items[0].dispense_status.value) == (1, "unknown")
    assert await gateway.store.stock("M1-A1") == (4, 0)  # unknown counts as gone
    commands = await gateway.store.query("SELECT cmd_id, result FROM dispense_commands")
    assert commands == [{"cmd_id": body.cmd_id, "result": "unknown"}]


async def test_late_answer_after_timeout_corrects_counts(
    gateway: Gateway, creds: dict[str, MachineCreds]
) -> None:
    async with device(gateway, creds["M1"], silent=True) as dev:
        order = await create_cash_order(gateway, [{"id": "M1-A1", "quantity": 1}])
        await dev.insert_coin(2000)
        assert await until_status(gateway, order["id"], "failed") == "failed"
        assert await gateway.store.stock("M1-A1") == (4, 0)
        await dev.answer_late(dev.received[0], "failed")

        async def corrected() -> bool:
            item = (await gateway.store.get_order(order["id"])).items[0]
            return (item.failed, item.unknown) == (1, 0)

        await wait_for(corrected)
    assert await gateway.store.stock("M1-A1") == (5, 0)  # it never left the slot
    assert await order_status(gateway, order["id"]) == "failed"
    # Credited once, at the timeout (the default policy refunds unknown units): the late
    # answer confirms it and gives nothing twice.
    assert await gateway.store.machine_credit("M1", "INR") == 2000


async def test_restart_resumes_with_the_same_command(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    """The gateway stops after sending a command; after the restart it re-sends the SAME bytes,
    and the device (which ran it once) answers from its journal: one motor run in total."""
    settings = gateway_settings(tmp_path / "gw", dispense_give_up_s=30.0, mqtt_port=0)
    async with Gateway(settings) as gw:
        await load_site(gw, creds)
        async with device(gw, creds["M1"], silent=True) as dev:
            order = await create_cash_order(gw, [{"id": "M1-A1", "quantity": 1}])
            await dev.insert_coin(2000)
            await wait_for(lambda: _received(dev))
            first_payload = dev.received[0]
        assert await order_status(gw, order["id"]) == "dispensing"

    async with Gateway(settings) as gw:
        async with device(gw, creds["M1"]) as dev:
            # This device instance "remembers" having run the command before the restart.
            body = verify_command(down_key(bytes.fromhex(creds["M1"].command_key)), first_payload)
            dev.journal[body.cmd_id] = "ok"
            assert await until_status(gw, order["id"], "completed") == "completed"
            assert dev.received and set(dev.received) == {first_payload}
            assert dev.motor_runs == []  # nothing ran twice
        assert len(await gw.store.query("SELECT cmd_id FROM dispense_commands")) == 1


async def _received(dev: DeviceDouble) -> bool:
    return bool(dev.received)


async def test_two_machines_vend_independently(
    gateway: Gateway, creds: dict[str, MachineCreds], m1: DeviceDouble
) -> None:
    async with device(gateway, creds["M2"]) as m2:
        first = await create_cash_order(gateway, [{"id": "M1-A1", "quantity": 1}])
        async with aiohttp.ClientSession(base_url=gateway.http_url) as http:
            body = {
                "machine_id": "M2",
                "items": [{"id": "M2-A1", "quantity": 1}],
                "payment_method": "cash",
            }
            async with http.post("/api/v1/orders", json=body) as response:
                second = (await response.json())["data"]
        await m2.insert_coin(2000)
        await m1.insert_coin(2000)
        assert await until_status(gateway, first["id"], "completed") == "completed"
        assert await until_status(gateway, second["id"], "completed") == "completed"
        assert len(m1.motor_runs) == 1 and len(m2.motor_runs) == 1


async def test_new_gateway_database_still_vends(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    """The device keeps the highest counter it accepted. A gateway with a new (or restored)
    database must still issue counters above it, or the device refuses every command."""
    async with Gateway(gateway_settings(tmp_path / "old")) as gw:
        await load_site(gw, creds)
        async with device(gw, creds["M1"]) as dev:
            order = await create_cash_order(gw, [{"id": "M1-A1", "quantity": 1}])
            await dev.insert_coin(2000)
            assert await until_status(gw, order["id"], "completed") == "completed"
            device_ctr = dev.last_ctr
    assert device_ctr > 0
    async with Gateway(gateway_settings(tmp_path / "new")) as gw:
        await load_site(gw, creds)
        async with device(gw, creds["M1"], last_ctr=device_ctr) as dev:
            order = await create_cash_order(gw, [{"id": "M1-A1", "quantity": 1}])
            await dev.insert_coin(2000)
            assert await until_status(gw, order["id"], "completed", "failed") == "completed"
            assert dev.refused == [] and len(dev.motor_runs) == 1
            assert dev.last_ctr > device_ctr


async def test_coins_pay_the_current_cash_order(gateway: Gateway, m1: DeviceDouble) -> None:
    """An abandoned unpaid cash order is superseded by the next one of its token's holder, which
    the coins then pay; while a cash order holds coins, another cash order on the machine is
    refused (409)."""
    abandoned = await create_cash_order(gateway, [{"id": "M1-A1", "quantity": 1}])
    current = await create_cash_order(
        gateway, [{"id": "M1-A2", "quantity": 1}], abandoned["order_token"]
    )
    assert await order_status(gateway, abandoned["id"]) == "cancelled"
    await m1.insert_coin(1000)
    await wait_for(lambda: _paid(gateway, current["id"], 1000))
    async with aiohttp.ClientSession(base_url=gateway.http_url) as http:
        body = {
            "machine_id": "M1",
            "items": [{"id": "M1-A1", "quantity": 1}],
            "payment_method": "cash",
        }
        headers = {"X-Order-Token": current["order_token"]}  # even its own token: coins are in
        async with http.post("/api/v1/orders", json=body, headers=headers) as response:
            assert response.status == 409
            assert (await response.json())["error"]["code"] == "machine_busy"
    await m1.insert_coin(1500)  # 500 more than needed
    assert await until_status(gateway, current["id"], "completed") == "completed"
    final = await gateway.store.get_order(current["id"])
    assert final.paid_amount == 2000
    assert (await gateway.store.get_order(abandoned["id"])).paid_amount == 0
    assert await gateway.store.machine_credit("M1", "INR") == 500
    # The overpaid 500 goes towards the next cash order.
    following = await create_cash_order(gateway, [{"id": "M1-A1", "quantity": 1}])
    assert following["paid_amount"] == 500 and following["status"] == "awaiting_payment"
    await m1.insert_coin(1500)
    assert await until_status(gateway, following["id"], "completed") == "completed"
    assert await gateway.store.machine_credit("M1", "INR") == 0
    assert len(m1.motor_runs) == 2
