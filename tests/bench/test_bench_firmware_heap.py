"""Smoke run of ``python -m tools.bench.firmware_heap --quick``: it finishes and prints its
ratio line. Nothing about heap sizes is asserted here (tests/firmware/test_fw_heap.py does)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_firmware_heap_bench_quick() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tools.bench.firmware_heap", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ratio smallest passing heap / ESP32 heap" in proc.stdout, proc.stdout
