"""Resets of a virtual board as mpremote and a terminal cause them: which boot follows, and
mpremote right after a reset (its Ctrl-C racing the reboot) still gets a REPL."""

import os
from pathlib import Path

import pytest
from vesp_support import Mpremote

from tools.virtual_esp32 import VirtualDevice

# A stand-in firmware: it prints the marker the harness waits for at boot, then runs forever.
FAKE_MAIN = "import time\nprint('SIM_PORT 0')\nwhile True:\n    time.sleep(0.05)\n"
MAIN_RAN = r"^SIM_PORT 0$"


@pytest.fixture
async def board(blank_board: VirtualDevice, mpremote: Mpremote, tmp_path: Path) -> VirtualDevice:
    """The blank board with FAKE_MAIN flashed (not yet running)."""
    main = tmp_path / "main.py"
    main.write_text(FAKE_MAIN)
    assert blank_board.serial_path is not None
    await mpremote(blank_board.serial_path, "fs", "cp", str(main), ":main.py")
    return blank_board


def _main_ran(board: VirtualDevice) -> bool:
    return "SIM_PORT 0" in board.output_lines[board.boot_line :]


async def test_reset_runs_main_and_mpremote_right_after_gets_the_repl(
    board: VirtualDevice, mpremote: Mpremote
) -> None:
    port = board.serial_path
    assert port is not None
    before = board.boots
    await mpremote(port, "reset")
    await board.wait_boot(before)
    await board.wait_output(MAIN_RAN, start=board.boot_line)
    for _ in range(3):
        before = board.boots
        await mpremote(port, "reset")
        # no wait: this Ctrl-C meets the old interpreter in reset or the new one starting
        assert (await mpremote(port, "exec", "print(6 * 7)")).strip() == "42"
        assert board.boots == before + 1
    assert board.serial_path == port


async def test_soft_reset_from_raw_repl_stays_in_the_repl(
    board: VirtualDevice, mpremote: Mpremote
) -> None:
    port = board.serial_path
    assert port is not None
    before = board.boots
    await mpremote(port, "soft-reset")
    assert board.boots == before + 1
    assert "MPY: soft reboot" in board.output_lines
    assert not _main_ran(board)  # as on a board: boot.py only, then the raw REPL
    assert (await mpremote(port, "exec", "print('still here')")).strip() == "still here"


async def test_ctrl_d_at_the_friendly_repl_reboots_into_main(board: VirtualDevice) -> None:
    assert board.serial_path is not None
    await board.wait_output(r">>> $", start=board.boot_line)
    before = board.boots
    fd = os.open(board.serial_path, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(fd, b"\x04")
        await board.wait_boot(before)
        await board.wait_output(MAIN_RAN, start=board.boot_line)
    finally:
        os.close(fd)
    assert "MPY: soft reboot" in board.output_lines
