"""vendctl device flash onto the virtual ESP32 in serial mode (tools/virtual_esp32): a blank
board is flashed through its /dev/pts port, boots the firmware with the bundle's identity, and
is flashed again while the firmware runs (mpremote interrupts it)."""

import asyncio
import json

from provisioning.cli import main
from tools.virtual_esp32 import VirtualDevice

BUNDLE = {
    "machine_id": "m-virtual-1",
    "mqtt_host": "127.0.0.1",
    "mqtt_port": 9,
    "mqtt_user": "m-virtual-1",
    "mqtt_password": "s3cret-mqtt",
    "command_key": "ef" * 32,
    "wifi_ssid": "",
    "wifi_password": "",
    "gateway_service": "_vending-gw._tcp.local.",
    "cloud_url": "http://127.0.0.1:1",
    "sim_slots": {"A1": 3},
}


async def test_flash_blank_virtual_esp32_then_reflash_running(tmp_path, capsys):
    flash = VirtualDevice.erase(tmp_path / "flash")
    bundle_file = tmp_path / "b.json"
    bundle_file.write_text(json.dumps(BUNDLE))
    async with VirtualDevice(flash, serial=True) as dev:
        port = dev.serial_path
        assert port is not None and port.startswith("/dev/pts/")
        argv = ["device", "flash", "--port", port, "--bundle", str(bundle_file)]
        assert await asyncio.to_thread(main, argv) == 0, capsys.readouterr().err
        assert json.loads((flash / "config.json").read_text()) == BUNDLE

        await dev.power_cycle()
        await dev.wait_output(r"^BOOT m-virtual-1 ", 15, dev.boot_line)

        bundle_file.write_text(json.dumps(BUNDLE | {"mqtt_port": 10}))
        assert await asyncio.to_thread(main, argv) == 0, capsys.readouterr().err
        assert json.loads((flash / "config.json").read_text())["mqtt_port"] == 10
    err = capsys.readouterr().err
    assert "verified" in err
