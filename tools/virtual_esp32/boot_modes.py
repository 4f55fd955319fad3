"""How a virtual board boots, and what kind of reset ended the previous boot.

A board runs boot.py then main.py at power-on and after a hard or friendly soft reset, drops to
the REPL when main.py ends or is interrupted, and after a soft reset from the raw REPL runs only
boot.py and stays in the raw REPL. The unix port exits on any soft reset, so the supervisor
reads the exit and starts the next boot in the matching mode.
"""

import enum
import signal
from pathlib import Path

# machine.reset() on the virtual board ends the interpreter with this status (a hard reset).
HARD_RESET_EXIT = 86
SOFT_REBOOT_BANNER = b"MPY: soft reboot\r\n"
# The unix port answers Ctrl-D on an empty raw-REPL line with this, then exits.
_RAW_SOFT_RESET_TAIL = b">OK\r\n"

# Runs before boot.py at every boot. The unix port's machine module has no reset(); mpremote's
# `reset` (and firmware that reboots itself) calls machine.reset(), so a stand-in module that
# forwards everything else to the real one is put in sys.modules, which import consults first.
PRELUDE = f"""\
def _vesp_prelude():
    import sys, machine
    class Machine:
        def __getattr__(self, name):
            return getattr(machine, name)
        def reset(self):
            sys.exit({HARD_RESET_EXIT})
    sys.modules["machine"] = Machine()
_vesp_prelude()
del _vesp_prelude
"""


class BootMode(enum.Enum):
    FULL = "full"  # boot.py, then main.py, then the REPL
    RAW_REPL = "raw"  # boot.py, then the raw REPL (after a soft reset from the raw REPL)
    REPL = "repl"  # straight to the REPL (Ctrl-C reached the interpreter before it could run)


def _present(flash_dir: Path, module: str) -> bool:
    return (flash_dir / f"{module}.py").exists() or (flash_dir / f"{module}.mpy").exists()


def has_firmware(flash_dir: Path) -> bool:
    return _present(flash_dir, "main")


def boot_script(flash_dir: Path, mode: BootMode) -> str:
    """The ``-c`` text for ``micropython -i``: ``-i`` drops to the REPL when it ends or is
    interrupted, as a board does."""
    script = PRELUDE
    if mode is BootMode.REPL:
        return script
    if _present(flash_dir, "boot"):
        script += "import boot\n"
    if mode is BootMode.FULL and _present(flash_dir, "main"):
        script += "import main\n"
    return script


def next_boot(returncode: int, output_tail: bytes) -> tuple[BootMode, bytes]:
    """After the interpreter exited by itself: the next boot's mode and what the board prints
    to the serial port first."""
    if returncode == 0 and output_tail.endswith(_RAW_SOFT_RESET_TAIL):
        return BootMode.RAW_REPL, SOFT_REBOOT_BANNER
    if returncode == 0:  # Ctrl-D at the friendly REPL, sys.exit(), machine.soft_reset()
        return BootMode.FULL, SOFT_REBOOT_BANNER
    if returncode == -signal.SIGINT:  # before the interpreter installed its SIGINT handler
        return BootMode.REPL, b""
    return BootMode.FULL, b""  # machine.reset(), or a crash: the board reboots
