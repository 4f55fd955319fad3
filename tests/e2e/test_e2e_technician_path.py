"""The technician's path: onboard with vendctl, flash a blank virtual ESP32 through the real
mpremote (finishing with the claim code, as a second technician would), see the machine come
online at the gateway, sell from it; then power-cycle it."""

import asyncio
import json
import os
import re
import sys
from pathlib import Path

from e2e_site import ADMIN_EMAIL, ADMIN_PASSWORD, Site
from polling import wait_for

from tools.virtual_esp32 import VirtualDevice

VENDCTL = str(Path(sys.executable).parent / "vendctl")


async def vendctl(config_dir: Path, *args: str) -> str:
    """Run the real CLI as the technician would (a subprocess: it drives mpremote, and the
    virtual board's pty bridge lives in this event loop)."""
    proc = await asyncio.create_subprocess_exec(
        VENDCTL,
        *args,
        env={**os.environ, "VENDCTL_CONFIG_DIR": str(config_dir), "COLUMNS": "200"},
        cwd=config_dir.parent,  # as a technician's own folder: nothing lands in the repo
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(120):
        out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"vendctl {' '.join(args)} failed:\n{text}"
    return text


async def test_onboard_flash_online_vend_and_power_cycle(bare_site: Site) -> None:
    site, gateway = bare_site, bare_site.gateway
    config_dir = site.root / "vendctl"

    await vendctl(config_dir, "login", "--cloud", site.cloud.api_url, "--email", ADMIN_EMAIL,
                  "--password", ADMIN_PASSWORD)  # fmt: skip
    bundle_path = site.root / "lobby.bundle.json"
    onboarded = await vendctl(
        config_dir, "machine", "onboard", "--name", "Lobby", "--site", site.site_id,
        "--slots", "A1:Water:2000:5,A2:Chips:3500:2", "--mqtt-port", str(gateway.mqtt_port),
        "--out", str(bundle_path), "--set", 'sim_slots={"A1": 5, "A2": 2}',
        "--set", "motor_ms=50", "--set", "drop_timeout_ms=300",
    )  # fmt: skip
    bundle = json.loads(bundle_path.read_text())
    machine_id = bundle["machine_id"]
    assert bundle["mqtt_password"] not in onboarded  # the screen and QR never show secrets
    match = re.search(r"claim code: (\S+)", onboarded)
    assert match, onboarded
    claim_code = match.group(1)

    board = VirtualDevice(VirtualDevice.erase(site.root / "board"), serial=True)
    async with board:  # powered on blank: MicroPython's REPL, no firmware yet
        assert board.serial_path is not None
        await vendctl(config_dir, "device", "flash", "--port", board.serial_path,
                      "--claim", claim_code, "--cloud", site.cloud.api_url)  # fmt: skip
        await board.power_cycle()
        await board.wait_online(timeout=30)

        async def online_at_gateway() -> bool:
            return any(m.id == machine_id and m.online for m in await gateway.store.list_machines())

        await wait_for(online_at_gateway, within=30)

        catalog = {i.slot: i.id for i in await gateway.store.catalog(machine_id)}
        body = {
            "machine_id": machine_id,
            "items": [{"id": catalog["A1"], "quantity": 1}],
            "payment_method": "cash",
        }
        async with site.http.post("/api/v1/orders", json=body) as response:
            assert response.status == 201, await response.text()
            order = (await response.json())["data"]
        await board.sim("coin", amount=2000)
        done = await site.finished(order["id"])
        assert done["status"] == "completed", done
        assert board.motor_runs() == 1

        # Power cycle: same identity, back online, nothing vended again.
        boots_before = board.boots
        await board.power_cycle()
        await board.wait_online(timeout=30)
        assert board.boots > boots_before
        presence = [line for line in board.output_lines if line.startswith("BOOT ")]
        assert len({line.split()[1] for line in presence}) == 1  # one machine id across boots
        assert presence[-1].split()[1] == machine_id
        await wait_for(online_at_gateway, within=30)
        assert board.motor_runs() == 1
        assert (await site.kiosk_order(order["id"]))["status"] == "completed"
        assert await site.kiosk_catalog_by_id(machine_id) == {"A1": 4, "A2": 2}
