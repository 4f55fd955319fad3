"""Smoke run of ``python -m tools.bench.order_intake --quick``: it finishes and prints its
ratio line. Nothing about speed is asserted here."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_order_intake_bench_quick() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tools.bench.order_intake", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ratio gateway / floor:" in proc.stdout, proc.stdout
