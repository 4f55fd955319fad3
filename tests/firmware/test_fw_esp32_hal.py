"""vend/hal/esp32.py under MicroPython with stand-ins for machine/network/ntptime (the ESP32's
hardware is the one thing not reachable here): pins, PWM, IRQ-driven drop sensor and coin
pulses with debouncing, Wi-Fi bring-up, stock counted on flash."""

from pathlib import Path

from fw_support import run_micropython

FAKE_MACHINE = """
EVENTS = []
HANDLERS = {}
IRQ_STATE = [0]

class Pin:
    OUT = 1
    IN = 0
    PULL_UP = 2
    IRQ_FALLING = 4
    def __init__(self, pin_id, mode=None, pull=None, value=None):
        self.id = pin_id
        self._v = value or 0
    def value(self, v=None):
        if v is None:
            return self._v
        self._v = v
        EVENTS.append(["pin", self.id, v])
    def irq(self, handler=None, trigger=None):
        HANDLERS[self.id] = handler

class PWM:
    def __init__(self, pin, freq=0, duty_u16=0):
        EVENTS.append(["pwm", pin.id, freq, duty_u16])
        self.pin = pin
    def deinit(self):
        EVENTS.append(["pwm_off", self.pin.id])

def disable_irq():
    IRQ_STATE[0] += 1
    return 1

def enable_irq(state):
    IRQ_STATE[0] -= 1

def fire(pin_id):
    HANDLERS[pin_id](None)
"""

FAKE_NETWORK = """
STA_IF = 0
class WLAN:
    def __init__(self, which):
        self._up = False
        self._calls = 0
    def active(self, on=None):
        return True
    def isconnected(self):
        return self._up
    def connect(self, ssid, password):
        self.ssid = ssid
        self._up = True
    def status(self, what=None):
        return -61
"""

FAKE_NTPTIME = """
def settime():
    pass
"""

SCRIPT = """
import asyncio
import fake_machine
sys.modules["machine"] = fake_machine
from vend import config
from vend.hal.esp32 import Esp32Hal

cfg = dict(config.DEFAULTS)
cfg.update(DATA)
hal = Esp32Hal(cfg)
out = {}

async def fire_later(pin_id, delays):
    for d in delays:
        await asyncio.sleep_ms(d)
        fake_machine.fire(pin_id)

async def main():
    await hal.start()
    await hal.network_up(1000)
    out["synced"] = hal.sync_time()
    out["rssi"] = hal.rssi()
    out["has"] = [hal.has_slot("A1"), hal.has_slot("B9")]
    asyncio.create_task(fire_later(34, [5]))
    await hal.run_motor("A1", "cmd1", 20)
    out["drop"] = await hal.wait_drop("A1", 200)
    await hal.run_motor("A2", "cmd2", 10)
    out["jam"] = await hal.wait_drop("A2", 50)
    out["events"] = fake_machine.EVENTS
    out["slots"] = hal.slots()
    # three pulses 40 ms apart, the second one bouncing: 3 pulses of 500 paise
    asyncio.create_task(fire_later(35, [5, 40, 2, 40]))
    out["credit"] = await asyncio.wait_for_ms(hal.next_credit(), 2000)
    out["irq_balanced"] = fake_machine.IRQ_STATE[0] == 0
    out["door"] = hal.door_open()

asyncio.run(main())
with open("stock.json") as f:
    out["stock_file"] = json.load(f)
print(json.dumps(out))
"""


def test_esp32_hal_drives_pins_and_counts_pulses(tmp_path: Path) -> None:
    (tmp_path / "fake_machine.py").write_text(FAKE_MACHINE)
    (tmp_path / "network.py").write_text(FAKE_NETWORK)
    (tmp_path / "ntptime.py").write_text(FAKE_NTPTIME)
    config = {
        "slot_pins": {"A1": 12, "A2": 13},
        "drop_pin": 34,
        "coin_pin": 35,
        "coin_value": 500,
        "door_pin": 27,
        "slot_stock": {"A1": 2, "A2": 3},
        "wifi_ssid": "site",
        "motor_duty": 40000,
    }
    got = run_micropython(SCRIPT, tmp_path, config)
    assert isinstance(got, dict)
    assert got["synced"] is True and got["rssi"] == -61
    assert got["has"] == [True, False]
    assert got["drop"] is True
    assert got["jam"] is False
    assert got["events"] == [
        ["pwm", 12, 1000, 40000],
        ["pwm_off", 12],
        ["pin", 12, 0],
        ["pwm", 13, 1000, 40000],
        ["pwm_off", 13],
        ["pin", 13, 0],
    ]
    assert got["slots"] == {"A1": 1, "A2": 3}  # only the unit that dropped is counted
    assert got["stock_file"] == {"A1": 1, "A2": 3}
    assert got["credit"] == 1500
    assert got["irq_balanced"] is True
    assert got["door"] is False
