"""Smoke run of ``python -m tools.bench.vend_latency --quick``: it finishes and prints its ratio
lines (a gateway process, virtual ESP32s, the broker floor). Nothing about speed is asserted."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_vend_latency_bench_quick() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tools.bench.vend_latency", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for level in (1, 2):
        assert f"ratio concurrency={level}: p50 x" in proc.stdout, proc.stdout
