"""Power cut mid-dispense: the command is never run again and the outcome is reported unknown."""

from e2e_site import Site


async def test_device_killed_mid_dispense_reports_unknown_and_never_reruns(site: Site) -> None:
    lobby = site.machines[0]
    device = lobby.device
    assert device is not None
    await device.sim("hold")

    order = await site.order(lobby, {"A1": 1}, "cash")
    await device.sim("coin", amount=2000)
    held = await device.wait_output(r"^SIM_HOLD motor (\S+)$", 20)
    cmd_id = held.group(1)
    runs_before_cut = device.motor_runs(cmd_id)

    await device.kill()  # the power cut, while the motor is turning
    await device.start()
    await device.wait_online(timeout=20)

    done = await site.finished(order["id"])
    assert done["status"] == "failed"
    item = done["items"][0]
    assert (item["unknown"], item["dispense_status"]) == (1, "unknown")
    # The gateway kept re-sending the same signed command; the device never ran it again.
    assert device.motor_runs(cmd_id) == runs_before_cut <= 1

    cloud_order = await site.synced(order["id"], "failed")
    assert cloud_order["items"][0]["unknown"] == 1
