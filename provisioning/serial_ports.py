"""Serial ports on this computer, with the USB bridges ESP32 boards use picked out by VID:PID."""

import os
import stat
from dataclasses import dataclass

from serial.tools import list_ports

from provisioning.errors import PortError

# (vid, pid) -> what sits on the board's USB side.
ESP32_BRIDGES: dict[tuple[int, int], str] = {
    (0x10C4, 0xEA60): "CP210x",
    (0x1A86, 0x7523): "CH340",
    (0x1A86, 0x55D4): "CH9102",
    (0x0403, 0x6001): "FTDI FT232R",
    (0x0403, 0x6010): "FTDI FT2232",
    (0x0403, 0x6014): "FTDI FT232H",
    (0x0403, 0x6015): "FTDI FT-X",
    (0x303A, 0x1001): "Espressif USB-Serial/JTAG",
    (0x303A, 0x0002): "Espressif USB-OTG (TinyUSB)",
}
PTY_PREFIX = "/dev/pts/"


@dataclass(frozen=True)
class PortInfo:
    device: str
    description: str
    vid: int | None
    pid: int | None
    serial_number: str | None

    @property
    def bridge(self) -> str | None:
        if self.vid is None or self.pid is None:
            return None
        return ESP32_BRIDGES.get((self.vid, self.pid))

    @property
    def usb_id(self) -> str:
        if self.vid is None or self.pid is None:
            return ""
        return f"{self.vid:04X}:{self.pid:04X}"


def list_serial_ports() -> list[PortInfo]:
    return sorted(
        (
            PortInfo(
                device=p.device,
                description=p.description if p.description not in (None, "n/a") else "",
                vid=p.vid,
                pid=p.pid,
                serial_number=p.serial_number,
            )
            for p in list_ports.comports()
        ),
        key=lambda p: p.device,
    )


def is_virtual(port: str) -> bool:
    """A pseudo-terminal: the virtual ESP32 (MicroPython unix port behind a pty)."""
    return port.startswith(PTY_PREFIX)


def check_port(port: str) -> None:
    """Refuse a port that cannot be a serial device before any tool tries to open it."""
    if not port:
        raise PortError("no serial port given")
    if os.sep in port or port.startswith("/"):
        try:
            mode = os.stat(port).st_mode
        except FileNotFoundError as exc:
            raise PortError(f"serial port {port} does not exist (see vendctl ports)") from exc
        except OSError as exc:
            raise PortError(f"cannot access serial port {port}: {exc.strerror}") from exc
        if not stat.S_ISCHR(mode):
            raise PortError(f"{port} is not a serial device")
        if not os.access(port, os.R_OK | os.W_OK):
            raise PortError(
                f"no permission to open {port} (add yourself to the dialout/uucp group)"
            )
        return
    # Names like COM3 have no path to stat: they must be among the ports the OS lists.
    if port not in {p.device for p in list_serial_ports()}:
        raise PortError(f"serial port {port} not found (see vendctl ports)")
