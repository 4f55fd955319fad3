"""The firmware runs in a small heap: 20 vends under ``micropython -X heapsize=72K``, precompiled.

72K is the smallest size this firmware completes 20 vends in every run of
``python -m tools.bench.firmware_heap`` (real gateway, 3 runs per size; 68K fails at the first
vend). The issue's goal is 64K: not reached yet (docs/firmware.md, "Heap"). The unix port is
64-bit, so an ESP32 needs less than this for the same objects."""

from fw_support import DeviceFactory, SigningGateway

from contracts import topics

VENDS = 20
HEAP = "72K"
# What must stay free after a collection, at start and after the vends: a connect, a command
# and its signed result need a few KB of room (transients and fragmentation).
MIN_FREE = 4 * 1024


async def test_twenty_vends_in_72k_heap(
    gateway: SigningGateway, make_device: DeviceFactory
) -> None:
    device = make_device("VM1", heapsize=HEAP, sim_slots={"A1": 30})
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
        assert not [line for line in device.output_lines if "MemoryError" in line]
    print(f"heap_free: READY {ready.group(1)}, at start {at_start}, after {VENDS} vends {after}")
    assert device.motor_runs() == VENDS
    assert at_start >= MIN_FREE and after >= MIN_FREE
