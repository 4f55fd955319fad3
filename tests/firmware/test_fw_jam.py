"""A jammed slot: the drop sensor never fires, the result is failed/jam, stock is unchanged."""

from fw_support import DeviceFactory, SigningGateway

from contracts import topics
from contracts.device_messages import DispenseResult, Inventory


async def test_jam_reports_failed_and_keeps_stock(
    gateway: SigningGateway, make_device: DeviceFactory
) -> None:
    async with make_device("VM1") as device:
        await device.wait_online()
        await device.sim("jam", slot="A1", on=True)
        cmd_id, payload = gateway.command("VM1", slot="A1")
        mark = len(gateway.received)
        await gateway.send("VM1", payload)
        msg = await gateway.wait_message("VM1", topics.DISPENSE_RESULT, id=cmd_id)
        result = DispenseResult.model_validate_json(msg.body)
        assert (result.result, result.reason, result.slot) == ("failed", "jam", "A1")
        inventory = await gateway.wait_message("VM1", topics.INVENTORY, start=mark)
        assert Inventory.model_validate_json(inventory.body).slots["A1"] == 5
        assert device.motor_runs(cmd_id) == 1

        await device.sim("jam", slot="A1", on=False)
        next_id, payload = gateway.command("VM1", slot="A1")
        await gateway.send("VM1", payload)
        await gateway.wait_message("VM1", topics.DISPENSE_RESULT, id=next_id, result="ok")
        assert (await device.sim("state"))["slots"] == {"A1": 4, "A2": 5}
