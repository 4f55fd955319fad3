"""Smoke run of ``python -m tools.bench.sync_drain --quick``: it finishes and prints its ratio
line. Nothing about speed is asserted here."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sync_drain_bench_quick() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tools.bench.sync_drain", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ratio: " in proc.stdout and "(cloud / floor)" in proc.stdout, proc.stdout
