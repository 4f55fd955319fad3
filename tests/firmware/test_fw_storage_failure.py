"""Flash write failure before the motor: no record, no vend, and no later copy of that command
runs once the flash works again."""

from pathlib import Path

from fw_support import DeviceFactory, SigningGateway

from contracts import topics
from contracts.device_messages import DispenseResult


async def test_command_refused_for_storage_never_runs_later(
    gateway: SigningGateway, make_device: DeviceFactory, tmp_path: Path
) -> None:
    async with make_device("VM1") as device:
        await device.wait_online()
        # A directory where the journal writes its temporary file: every journal write fails.
        blocker = tmp_path / "flash-VM1" / "journal.json.tmp"
        blocker.mkdir()
        cmd_id, payload = gateway.command("VM1", slot="A1")
        await gateway.send("VM1", payload)
        msg = await gateway.wait_message("VM1", topics.DISPENSE_RESULT, id=cmd_id)
        result = DispenseResult.model_validate_json(msg.body)
        assert (result.result, result.reason) == ("failed", "storage")
        assert device.motor_runs(cmd_id) == 0

        blocker.rmdir()  # the flash works again; a queued copy of the command arrives
        mark = len(device.output_lines)
        await gateway.send("VM1", payload)
        await device.wait_output(r"refused command .*stale_counter", timeout=10, start=mark)
        assert device.motor_runs(cmd_id) == 0

        next_id, payload = gateway.command("VM1", slot="A1")
        await gateway.send("VM1", payload)
        await gateway.wait_message("VM1", topics.DISPENSE_RESULT, id=next_id, result="ok")
        assert device.motor_runs(next_id) == 1
