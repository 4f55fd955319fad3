"""Smoke runs of every benchmark in ``tools/bench`` with ``--quick``: each finishes and prints
its ratio line(s) against the floor it measures in the same run. Nothing about speed is
asserted here: the figures are in docs/benchmarks.md, measured with the full runs."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# benchmark module -> (time limit in seconds, lines its output must contain)
BENCHES: dict[str, tuple[int, tuple[str, ...]]] = {
    "cloud_reads": (120, ("ratio cloud/floor: ", "ratio with writer/floor: ")),
    "device_swarm": (300, ("ratio gateway/mosquitto at 20 devices:",)),
    "firmware_heap": (120, ("ratio smallest passing heap / ESP32 heap",)),
    "order_intake": (120, ("ratio gateway / floor:",)),
    "sync_drain": (120, ("ratio: ", "(cloud / floor)")),
    "vend_latency": (240, ("ratio concurrency=1: p50 x", "ratio concurrency=2: p50 x")),
}


@pytest.mark.parametrize("bench", sorted(BENCHES))
def test_bench_quick_run_prints_its_ratio(bench: str) -> None:
    limit, expected = BENCHES[bench]
    proc = subprocess.run(
        [sys.executable, "-m", f"tools.bench.{bench}", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=limit,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    for line in expected:
        assert line in proc.stdout, proc.stdout
