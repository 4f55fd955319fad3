"""Flashing the real firmware onto a blank virtual board with mpremote, then resets and power
cycles: the board comes online, keeps its serial port and its identity, its boot count grows."""

import hashlib
from pathlib import Path

from vesp_support import Mpremote

from tools.virtual_esp32 import VirtualDevice, install

MACHINE_ID = "VB1"
HASH_SCRIPT = """\
import hashlib, binascii
for p in {paths!r}:
    d = hashlib.sha256()
    with open(p, 'rb') as f:
        d.update(f.read())
    print('SHA256', p, binascii.hexlify(d.digest()).decode())
"""


def _stage(tmp_path: Path, broker_port: int) -> Path:
    """What a flash tool copies: mpy-cross'd firmware, boot.py/main.py, config.json."""
    staging = tmp_path / "staging"
    config: dict[str, object] = {
        "machine_id": MACHINE_ID,
        "mqtt_host": "127.0.0.1",
        "mqtt_port": broker_port,
        "mqtt_password": "pw",
        "command_key": "ab" * 32,
        "sim_slots": {"A1": 3},
        "backoff_min_ms": 100,
        "backoff_max_ms": 1000,
    }
    install(staging, config)
    return staging


async def _boot_counter(board: VirtualDevice) -> int:
    await board.wait_online()
    match = await board.wait_output(r"^BOOT (\S+) \S+ (\d+)$", start=board.boot_line)
    assert match.group(1) == MACHINE_ID
    return int(match.group(2))


async def test_flash_reset_online_power_cycle_and_interrupt(
    broker_port: int, blank_board: VirtualDevice, mpremote: Mpremote, tmp_path: Path
) -> None:
    # broker_port comes first so the broker is torn down after the board (amqtt's shutdown
    # waits for connected clients)
    port = blank_board.serial_path
    assert port is not None
    staging = _stage(tmp_path, broker_port)
    files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    dirs = sorted({p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_dir()})
    chain: list[str] = []
    for d in dirs:
        chain += ["fs", "mkdir", f":{d}", "+"]
    for f in files:
        chain += ["fs", "cp", str(staging / f), f":{f}", "+"]
    await mpremote(port, *chain[:-1])

    out = await mpremote(port, "exec", HASH_SCRIPT.format(paths=files))
    on_device = {p: h for _, p, h in (line.split() for line in out.splitlines())}
    assert on_device == {f: hashlib.sha256((staging / f).read_bytes()).hexdigest() for f in files}
    assert not any(line.startswith("SIM_PORT") for line in blank_board.output_lines)

    before = blank_board.boots
    await mpremote(port, "reset")  # machine.reset(): a hard reset runs boot.py and main.py
    await blank_board.wait_boot(before)
    first = await _boot_counter(blank_board)
    assert (await blank_board.sim("state"))["slots"] == {"A1": 3}

    await blank_board.power_cycle()  # power cut and power on: same port, same flash
    assert blank_board.serial_path == port
    assert await _boot_counter(blank_board) == first + 1

    # mpremote interrupts the running firmware (Ctrl-C) to reach the raw REPL, as on a board
    boot_line = blank_board.boot_line
    out = await mpremote(
        port, "exec", "import json; print(json.load(open('config.json'))['machine_id'])"
    )
    assert out.strip() == MACHINE_ID
    assert any("KeyboardInterrupt" in line for line in blank_board.output_lines[boot_line:])

    before = blank_board.boots
    await mpremote(port, "reset")
    await blank_board.wait_boot(before)
    assert await _boot_counter(blank_board) == first + 2
    assert blank_board.serial_path == port
