# ESP32 hardware: slot motors on PWM pins, drop sensor and coin pulses on IRQs, door switch,
# Wi-Fi and NTP. Units per slot are counted on flash (stock.json) since the machine has no
# stock sensor: they start from config `slot_stock` and go down with each unit that drops.
import asyncio
import json
import os

import network
from machine import PWM, Pin, disable_irq, enable_irq
from time import ticks_diff, ticks_ms

_STOCK_FILE = "stock.json"
_DEBOUNCE_MS = 30


class Esp32Hal:
    def __init__(self, cfg):
        self._cfg = cfg
        self._slot_pins = {}
        for slot, pin in cfg["slot_pins"].items():
            self._slot_pins[slot] = Pin(pin, Pin.OUT, value=0)
        self._duty = cfg["motor_duty"]
        self._drop = asyncio.ThreadSafeFlag()
        self._coin = asyncio.ThreadSafeFlag()
        self._pulses = 0
        self._last_pulse = 0
        self._door = None
        if cfg["door_pin"] is not None:
            self._door = Pin(cfg["door_pin"], Pin.IN, Pin.PULL_UP)
        self._wlan = network.WLAN(network.STA_IF)
        self._stock = self._load_stock(cfg)

    def _load_stock(self, cfg):
        try:
            with open(_STOCK_FILE) as f:
                return json.load(f)
        except (OSError, ValueError):
            return dict(cfg["slot_stock"])

    def _save_stock(self):
        try:
            with open(_STOCK_FILE + ".tmp", "w") as f:
                json.dump(self._stock, f)
            os.rename(_STOCK_FILE + ".tmp", _STOCK_FILE)
        except OSError:
            pass  # a count is an estimate; the journal is what must not be lost

    async def start(self):
        if self._cfg["drop_pin"] is not None:
            Pin(self._cfg["drop_pin"], Pin.IN, Pin.PULL_UP).irq(
                handler=self._on_drop, trigger=Pin.IRQ_FALLING
            )
        if self._cfg["coin_pin"] is not None:
            Pin(self._cfg["coin_pin"], Pin.IN, Pin.PULL_UP).irq(
                handler=self._on_coin, trigger=Pin.IRQ_FALLING
            )

    def _on_drop(self, _pin):
        self._drop.set()

    def _on_coin(self, _pin):
        # IRQ context: no allocation, just count debounced pulses.
        now = ticks_ms()
        if ticks_diff(now, self._last_pulse) >= _DEBOUNCE_MS:
            self._pulses += 1
            self._coin.set()
        self._last_pulse = now

    async def network_up(self, timeout_ms):
        wlan = self._wlan
        wlan.active(True)
        if wlan.isconnected():
            return
        wlan.connect(self._cfg["wifi_ssid"], self._cfg["wifi_password"])
        start = ticks_ms()
        while not wlan.isconnected():
            if ticks_diff(ticks_ms(), start) > timeout_ms:
                raise OSError("wifi connect timeout")
            await asyncio.sleep_ms(200)

    def sync_time(self):
        try:
            import ntptime

            ntptime.settime()
            return True
        except (OSError, OverflowError):
            return False

    def clock_synced(self):
        return False

    def rssi(self):
        try:
            return self._wlan.status("rssi")
        except (OSError, ValueError):
            return None

    def door_open(self):
        return self._door is not None and self._door.value() == 1

    def temp_c(self):
        return None  # cabinet sensor wiring differs per machine model: a later issue

    def slots(self):
        return dict(self._stock)

    def has_slot(self, slot):
        return slot in self._slot_pins

    def stock(self, slot):
        return self._stock.get(slot)

    async def run_motor(self, slot, cmd_id, ms):
        self._drop.clear()
        pwm = PWM(self._slot_pins[slot], freq=1000, duty_u16=self._duty)
        try:
            await asyncio.sleep_ms(ms)
        finally:
            pwm.deinit()
            self._slot_pins[slot].value(0)

    async def wait_drop(self, slot, timeout_ms):
        try:
            await asyncio.wait_for_ms(self._drop.wait(), timeout_ms)
        except asyncio.TimeoutError:
            return False
        if self._stock.get(slot):
            self._stock[slot] -= 1
            self._save_stock()
        return True

    async def next_credit(self):
        while True:
            await self._coin.wait()
            # Let a burst of pulses for one coin or bill finish before turning it into money.
            await asyncio.sleep_ms(150)
            state = disable_irq()
            pulses = self._pulses
            self._pulses = 0
            enable_irq(state)
            if pulses:
                return pulses * self._cfg["coin_value"]

