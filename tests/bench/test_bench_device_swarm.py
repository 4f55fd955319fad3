"""Smoke run of the device swarm benchmark: it finishes and prints its ratio line."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_device_swarm_quick_run_prints_its_ratio() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tools.bench.device_swarm", "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ratio gateway/mosquitto at 20 devices:" in done.stdout
