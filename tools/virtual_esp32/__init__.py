"""A virtual ESP32: the real firmware in the MicroPython unix port with the simulated HAL."""

from tools.virtual_esp32.device import VirtualDevice
from tools.virtual_esp32.errors import (
    DeviceStartError,
    FlashInstallError,
    OutputTimeoutError,
    SimControlError,
    VirtualDeviceError,
)
from tools.virtual_esp32.flash import FIRMWARE_DIR, erase_flash, install

__all__ = [
    "FIRMWARE_DIR",
    "DeviceStartError",
    "FlashInstallError",
    "OutputTimeoutError",
    "SimControlError",
    "VirtualDevice",
    "VirtualDeviceError",
    "erase_flash",
    "install",
]
