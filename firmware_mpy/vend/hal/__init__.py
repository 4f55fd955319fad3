# Hardware abstraction. Every implementation offers:
#   await start()                      begin background work (IRQs, simulator control server)
#   await network_up(timeout_ms)       bring the network up or raise OSError
#   sync_time() -> bool                set the wall clock (NTP); True once it is right
#   clock_synced() -> bool             is the wall clock right at power-up
#   rssi() -> int | None, door_open() -> bool, temp_c() -> float | None
#   slots() -> {slot: units}, has_slot(slot) -> bool, stock(slot) -> int | None
#   await run_motor(slot, cmd_id, ms)  turn the slot's motor for one unit
#   await wait_drop(slot, timeout_ms)  -> True if the drop sensor saw the unit fall
#   await next_credit() -> paise       the next coin/bill credit
import sys


def create(cfg):
    kind = cfg["hal"]
    if kind == "auto":
        kind = "esp32" if sys.platform == "esp32" else "sim"
    if kind == "esp32":
        from vend.hal.esp32 import Esp32Hal

        return Esp32Hal(cfg)
    if kind == "sim":
        from vend.hal.sim import SimHal

        return SimHal(cfg)
    raise ValueError("unknown hal " + kind)
