"""Smoke run of ``python -m tools.bench.cloud_reads --quick``: it finishes and prints its ratio
lines. Nothing about speed is asserted here."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cloud_reads_bench_quick() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tools.bench.cloud_reads", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ratio cloud/floor: " in proc.stdout, proc.stdout
    assert "ratio with writer/floor: " in proc.stdout, proc.stdout
