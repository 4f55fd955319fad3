"""Power cut mid-dispense, and un-acked results across restarts."""

from fw_support import DeviceFactory, SigningGateway

from contracts import topics
from contracts.device_messages import CashCredit, DispenseResult, Presence


async def test_power_cut_at_motor_reports_unknown_and_never_reruns(
    gateway: SigningGateway, make_device: DeviceFactory
) -> None:
    device = make_device("VM1")
    async with device:
        await device.wait_online()
        await device.sim("hold", point="motor")
        cmd_id, payload = gateway.command("VM1")
        await gateway.send("VM1", payload)
        await device.wait_output(f"^SIM_HOLD motor {cmd_id}$")
        await device.kill()  # the power cut, with the motor running
        assert not gateway.messages("VM1", topics.DISPENSE_RESULT)

        mark = len(gateway.received)
        await device.start()
        msg = await gateway.wait_message("VM1", topics.DISPENSE_RESULT, id=cmd_id, start=mark)
        result = DispenseResult.model_validate_json(msg.body)
        assert (result.result, result.reason) == ("unknown", "power_loss")
        online = await gateway.wait_message("VM1", topics.PRESENCE, online=True, start=mark)
        assert Presence.model_validate_json(online.payload).boot == 2
        await gateway.wait_log("VM1", f"dispense {cmd_id} interrupted by power loss", start=mark)

        # the gateway, having heard nothing before the cut, re-sends the same command
        await device.wait_online()
        mark = len(gateway.received)
        await gateway.send("VM1", payload)
        await gateway.wait_log("VM1", f"replayed command {cmd_id}", start=mark)
        again = await gateway.wait_message("VM1", topics.DISPENSE_RESULT, id=cmd_id, start=mark)
        assert DispenseResult.model_validate_json(again.body).result == "unknown"

        # and a fresh command still works after the restart
        next_id, next_payload = gateway.command("VM1")
        await gateway.send("VM1", next_payload)
        await gateway.wait_message("VM1", topics.DISPENSE_RESULT, id=next_id, result="ok")
    assert device.motor_runs(cmd_id) == 1
    assert device.motor_runs() == 2


async def test_unacked_results_survive_restart_and_are_republished(
    gateway: SigningGateway, make_device: DeviceFactory
) -> None:
    device = make_device("VM1")
    async with device:
        await device.wait_online()
        cmd_id, payload = gateway.command("VM1")
        await gateway.send("VM1", payload)
        first = await gateway.wait_message("VM1", topics.DISPENSE_RESULT, id=cmd_id)
        await device.sim("coin", amount=2000)
        cash = await gateway.wait_message("VM1", topics.CASH_CREDIT, amount=2000)
        cash_id = CashCredit.model_validate_json(cash.body).id
        await device.kill()

        mark = len(gateway.received)
        await device.start()
        again = await gateway.wait_message("VM1", topics.DISPENSE_RESULT, id=cmd_id, start=mark)
        assert again.payload == first.payload  # the journalled bytes, unchanged
        cash_again = await gateway.wait_message("VM1", topics.CASH_CREDIT, id=cash_id, start=mark)
        assert cash_again.payload == cash.payload
        acks_seen = len(device.output_lines)
        await gateway.ack("VM1", [cmd_id, cash_id])
        await device.wait_output(r"^EVENTS acked 2 pending 0$", start=acks_seen)

        # after the ack and another restart nothing is re-sent
        await device.stop()
        await device.start()
        await device.wait_online()
        mark = len(gateway.received)
        await device.sim("coin", amount=100)  # its resends mark the passing rounds
        probe = await gateway.wait_message("VM1", topics.CASH_CREDIT, amount=100, start=mark)
        probe_id = CashCredit.model_validate_json(probe.body).id

        def resent_twice(_m: object) -> bool:
            return len(gateway.events("VM1", topics.CASH_CREDIT, probe_id, mark)) >= 3

        await gateway.wait_for(resent_twice, start=mark)
        assert not gateway.events("VM1", topics.DISPENSE_RESULT, cmd_id, mark)
        assert not gateway.events("VM1", topics.CASH_CREDIT, cash_id, mark)
    assert device.motor_runs(cmd_id) == 1
