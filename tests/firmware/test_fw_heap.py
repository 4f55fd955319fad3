"""The firmware runs in an ESP32-sized heap: 96K, precompiled, through 20 vends."""

from fw_support import DeviceFactory, SigningGateway

from contracts import topics

VENDS = 20
# What must stay free for Wi-Fi/TLS buffers and bursts of messages on a real board.
MIN_FREE = 24 * 1024


async def test_twenty_vends_in_96k_heap(
    gateway: SigningGateway, make_device: DeviceFactory
) -> None:
    device = make_device("VM1", heapsize="96K", sim_slots={"A1": 30})
    async with device:
        await device.wait_online()
        ready = await device.wait_output(r"^READY heap_free (\d+)$")
        at_start = int((await device.sim("state"))["heap_free"])  # type: ignore[call-overload]
        for _ in range(VENDS):
            cmd_id, payload = gateway.command("VM1")
            await gateway.send("VM1", payload)
            await gateway.wait_message("VM1", topics.DISPENSE_RESULT, id=cmd_id, result="ok")
            await gateway.ack("VM1", [cmd_id])
        await device.wait_output(r"^EVENTS acked 1 pending 0$", start=device.boot_line + 1)
        state = await device.sim("state")
        after = int(state["heap_free"])  # type: ignore[call-overload]
        assert state["slots"] == {"A1": 30 - VENDS}
    print(f"heap_free: READY {ready.group(1)}, at start {at_start}, after {VENDS} vends {after}")
    assert device.motor_runs() == VENDS
    assert at_start >= MIN_FREE and after >= MIN_FREE
