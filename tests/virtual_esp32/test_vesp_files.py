"""The real mpremote copies, reads, lists and hashes files on a blank virtual board."""

import hashlib
from pathlib import Path

from vesp_support import Mpremote

from tools.virtual_esp32 import VirtualDevice


async def test_copy_read_back_list_and_hash(
    blank_board: VirtualDevice, mpremote: Mpremote, tmp_path: Path
) -> None:
    port = blank_board.serial_path
    assert port is not None and port.startswith("/dev/pts/")
    local = tmp_path / "blob.bin"
    # Every byte value, Ctrl-C/Ctrl-D included: the pty must pass them through untouched.
    local.write_bytes(bytes(range(256)) * 20)
    await mpremote(port, "fs", "cp", str(local), ":blob.bin")
    assert (blank_board.flash_dir / "blob.bin").read_bytes() == local.read_bytes()
    back = tmp_path / "back.bin"
    await mpremote(port, "fs", "cp", ":blob.bin", str(back))
    assert back.read_bytes() == local.read_bytes()

    text = tmp_path / "notes.txt"
    text.write_text("line one\nline two\n" * 40)
    await mpremote(port, "fs", "cp", str(text), ":notes.txt")
    # fs cat prints through the raw REPL, whose end marker is Ctrl-D: text files only
    assert await mpremote(port, "fs", "cat", "notes.txt") == text.read_text()

    listing = await mpremote(port, "fs", "ls")
    assert {"notes.txt", "blob.bin"} <= set(listing.split())

    digest = await mpremote(
        port,
        "exec",
        "import hashlib, binascii\n"
        "print(binascii.hexlify(hashlib.sha256(open('blob.bin', 'rb').read()).digest()).decode())",
    )
    assert digest.strip() == hashlib.sha256(local.read_bytes()).hexdigest()
    assert blank_board.boots == 1  # with resume nothing reset the board


async def test_without_resume_soft_resets_into_the_raw_repl(
    blank_board: VirtualDevice, mpremote: Mpremote
) -> None:
    port = blank_board.serial_path
    assert port is not None
    out = await mpremote(port, "exec", "print('after soft reset')", resume=False)
    assert out.strip() == "after soft reset"
    assert blank_board.boots == 2
    assert blank_board.serial_path == port
    assert "MPY: soft reboot" in blank_board.output_lines
