"""Errors of the virtual ESP32 harness."""


class VirtualDeviceError(Exception):
    """Root of every harness error."""


class FlashInstallError(VirtualDeviceError):
    """Copying or precompiling the firmware onto the virtual flash failed."""


class DeviceStartError(VirtualDeviceError):
    """The interpreter exited or stayed silent before the simulator was ready."""


class SimControlError(VirtualDeviceError):
    """A request to the simulator's control port failed or was refused."""


class OutputTimeoutError(VirtualDeviceError, TimeoutError):
    """No output line matched in time."""
