"""Replayed, forged, misaddressed, stale and expired dispense commands never run the motor."""

import json

from fw_support import DeviceFactory, SigningGateway

from contracts import topics
from contracts.device_messages import DispenseResult


async def test_replayed_command_resends_the_recorded_result(
    gateway: SigningGateway, make_device: DeviceFactory
) -> None:
    async with make_device("VM1") as device:
        await device.wait_online()
        cmd_id, payload = gateway.command("VM1")
        await gateway.send("VM1", payload)
        first = await gateway.wait_message("VM1", topics.DISPENSE_RESULT, id=cmd_id)
        await gateway.ack("VM1", [cmd_id])

        mark = len(gateway.received)
        await gateway.send("VM1", payload)  # the very same bytes
        await gateway.wait_log("VM1", f"replayed command {cmd_id}", start=mark)
        again = await gateway.wait_message("VM1", topics.DISPENSE_RESULT, id=cmd_id, start=mark)
        assert DispenseResult.model_validate_json(again.body) == (
            DispenseResult.model_validate_json(first.body)
        )
        assert device.motor_runs(cmd_id) == 1
        assert device.motor_runs() == 1


async def test_bad_hmac_wrong_mid_and_old_counter_do_nothing(
    gateway: SigningGateway, make_device: DeviceFactory
) -> None:
    async with make_device("VM1") as device:
        await device.wait_online()

        # forged: signed with another key
        forged_id, forged = gateway.command("VM1", ctr=10, key=b"\x01" * 32)
        await gateway.send("VM1", forged)
        await gateway.wait_log("VM1", "refused command: bad_signature")

        # tampered: body changed after signing
        tampered_id, good = gateway.command("VM1", ctr=11)
        envelope = json.loads(good)
        envelope["body"] = envelope["body"].replace('"slot":"A1"', '"slot":"A2"')
        mark = len(gateway.received)
        await gateway.send("VM1", json.dumps(envelope).encode())
        await gateway.wait_log("VM1", "refused command: bad_signature", start=mark)

        # correctly signed, but for another machine
        other_id, other = gateway.command("VM1", ctr=12, mid="VM2")
        await gateway.send("VM1", other)
        await gateway.wait_log("VM1", "refused command: wrong_mid")

        # garbage
        await gateway.send("VM1", b"\xff not json")
        await gateway.wait_log("VM1", "refused command: malformed_envelope")

        # a genuine command at counter 20, then a genuine one at an older counter
        ok_id, ok = gateway.command("VM1", ctr=20)
        await gateway.send("VM1", ok)
        await gateway.wait_message("VM1", topics.DISPENSE_RESULT, id=ok_id, result="ok")
        stale_id, stale = gateway.command("VM1", ctr=15)
        await gateway.send("VM1", stale)
        await gateway.wait_log("VM1", f"refused command {stale_id}: stale_counter")

    assert device.motor_runs() == 1 and device.motor_runs(ok_id) == 1
    results = {m.json()["id"] for m in gateway.messages("VM1", topics.DISPENSE_RESULT)}
    assert results == {ok_id}
    assert not {forged_id, tampered_id, other_id, stale_id} & results
    for log in gateway.messages("VM1", topics.LOGS):
        if "refused" in str(log.json()["msg"]):
            assert log.json()["level"] == "warning"


async def test_expired_command_reports_failed_without_motor(
    gateway: SigningGateway, make_device: DeviceFactory
) -> None:
    async with make_device("VM1") as device:
        await device.wait_online()
        cmd_id, payload = gateway.command("VM1", exp_in=-5)
        await gateway.send("VM1", payload)
        msg = await gateway.wait_message("VM1", topics.DISPENSE_RESULT, id=cmd_id)
        result = DispenseResult.model_validate_json(msg.body)
        assert (result.result, result.reason) == ("failed", "expired")
        state = await device.sim("state")
        assert state["slots"] == {"A1": 5, "A2": 5}
    assert device.motor_runs() == 0


async def test_oversized_and_malformed_messages_are_dropped_and_logged(
    gateway: SigningGateway, make_device: DeviceFactory
) -> None:
    async with make_device("VM1") as device:
        await device.wait_online()
        await gateway.send("VM1", b"{" + b" " * 6000 + b"}")
        await gateway.wait_log("VM1", "oversized message dropped")
        await gateway.publish_ack("VM1", b"[1, 2]")
        await gateway.wait_log("VM1", "refused acks: malformed_envelope")

        cmd_id, payload = gateway.command("VM1")
        await gateway.send("VM1", payload)
        await gateway.wait_message("VM1", topics.DISPENSE_RESULT, id=cmd_id, result="ok")
        assert device.motor_runs() == 1
        assert device.running
