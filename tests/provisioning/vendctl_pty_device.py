"""A bare stand-in for a board's USB serial REPL, for the flash tests: the MicroPython unix port
in interactive mode with its stdio on the master side of a pseudo-terminal, its working
directory playing the flash. ``mpremote connect <slave> resume ...`` drives it like a board.
(The full virtual ESP32, with its supervisor and simulated hardware, is tools/virtual_esp32.)"""

import contextlib
import os
import subprocess
import sys
import tty
from collections.abc import Iterator
from pathlib import Path

MICROPYTHON = str(Path(sys.executable).parent / "micropython")


@contextlib.contextmanager
def pty_repl(flash_dir: Path) -> Iterator[str]:
    """Yields the slave path; the interpreter runs until the block ends."""
    flash_dir.mkdir(parents=True, exist_ok=True)
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    proc = subprocess.Popen(
        [MICROPYTHON, "-i"],
        stdin=master,
        stdout=master,
        stderr=master,
        cwd=flash_dir,
        start_new_session=True,
    )
    os.close(slave)
    try:
        yield path
    finally:
        proc.kill()
        proc.wait(10)
        os.close(master)
