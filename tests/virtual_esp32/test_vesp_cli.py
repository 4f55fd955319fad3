"""``python -m tools.virtual_esp32 FLASH --serial --erase``: prints its port, answers mpremote,
stops cleanly on Ctrl-C (SIGINT)."""

import asyncio
import signal
import sys
from pathlib import Path

from vesp_support import Mpremote

WAIT_S = 15.0


async def test_serial_cli_prints_port_serves_mpremote_and_stops_on_ctrl_c(
    tmp_path: Path, mpremote: Mpremote
) -> None:
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "leftover.txt").write_text("erased at start")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.virtual_esp32",
        str(flash),
        "--serial",
        "--erase",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(WAIT_S):
            first = (await proc.stdout.readline()).decode().split()
        assert first[0] == "SERIAL" and first[1].startswith("/dev/pts/")
        assert not (flash / "leftover.txt").exists()
        out = await mpremote(first[1], "exec", "import os; print(sorted(os.listdir()))")
        assert out.strip() == "[]"
    finally:
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(WAIT_S):
            _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
