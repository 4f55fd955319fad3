"""``make demo`` as a newcomer runs it: a whole site comes up, a sandbox purchase completes and
reaches the cloud, and Ctrl-C leaves no process behind."""

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from provisioning.cloud_api import CloudApi

ROOT = Path(__file__).resolve().parents[2]
DEMO_UP_S = 180.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes only once reaped; check its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def _wait_for_file(path: Path, proc: subprocess.Popen[bytes], within: float) -> dict:
    deadline = time.monotonic() + within
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"make demo exited early with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {within}s")
        time.sleep(0.2)
    return json.loads(path.read_text())


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """Ctrl-C as a terminal sends it: to the whole foreground process group."""
    os.killpg(proc.pid, signal.SIGINT)
    return proc.wait(timeout=60)


@pytest.fixture
def demo(tmp_path: Path):  # type: ignore[no-untyped-def]
    log = (tmp_path / "make-demo.log").open("wb")
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "demo"],
        cwd=ROOT,
        env={**os.environ, "VENDING_DEMO_DIR": str(tmp_path / "var")},
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        info = _wait_for_file(tmp_path / "var" / "demo.json", proc, DEMO_UP_S)
        yield proc, info, tmp_path / "make-demo.log"
    finally:
        if proc.poll() is None:
            _stop(proc)
        log.close()


async def test_make_demo_sells_one_item_and_stops_cleanly(demo) -> None:  # type: ignore[no-untyped-def]
    proc, info, log_path = demo
    assert set(info) >= {
        "kiosk_url",
        "gateway_url",
        "cloud_url",
        "admin_email",
        "admin_password",
        "machines",
    }
    assert len(info["machines"]) == 2
    machine = info["machines"][0]

    async with aiohttp.ClientSession(base_url=info["gateway_url"]) as kiosk:
        async with kiosk.get(info["kiosk_url"].removeprefix(info["gateway_url"])) as page:
            assert page.status == 200
            assert "text/html" in page.headers["Content-Type"]
        async with kiosk.get(f"/api/v1/machines/{machine['id']}/catalog") as response:
            catalog = (await response.json())["data"]
        item = next(i for i in catalog if i["quantity"] > 0)
        body = {
            "machine_id": machine["id"],
            "items": [{"id": item["id"], "quantity": 1}],
            "payment_method": "sandbox",
        }
        headers = {"Idempotency-Key": "demo-test-order-1"}
        async with kiosk.post("/api/v1/orders", json=body, headers=headers) as response:
            assert response.status == 201, await response.text()
            order = (await response.json())["data"]

        deadline = time.monotonic() + 60
        while order["status"] != "completed":
            assert order["status"] in ("awaiting_payment", "paid", "dispensing"), order
            assert time.monotonic() < deadline, order
            await asyncio.sleep(0.2)
            async with kiosk.get(f"/api/v1/orders/{order['id']}") as response:
                order = (await response.json())["data"]

    async with CloudApi(info["cloud_url"]) as admin:
        await admin.login(info["admin_email"], info["admin_password"])
        deadline = time.monotonic() + 60
        while not [o for o in await admin.orders() if o["id"] == order["id"]]:
            assert time.monotonic() < deadline, "order never reached the cloud"
            await asyncio.sleep(0.2)
        cloud_order = await admin.order(order["id"])
    assert cloud_order["total_amount"] == item["price"]

    pids = [int(pid) for pid in info["pids"].values()]
    assert all(_alive(pid) for pid in pids)
    # make itself dies of the SIGINT (as it does at a terminal) once the demo has stopped.
    assert _stop(proc) in (0, -signal.SIGINT)
    assert log_path.read_text().rstrip().endswith("demo: stopped"), log_path.read_text()[-2000:]
    # Its URLs and admin password described processes that no longer run.
    assert not (log_path.parent / "var" / "demo.json").exists()
    _assert_all_gone(proc, pids)


def _assert_all_gone(proc: subprocess.Popen[bytes], pids: list[int]) -> None:
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if _alive(pid)], "processes left after Ctrl-C"
    leftovers = subprocess.run(
        ["pgrep", "-g", str(proc.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert leftovers == [], "processes left in the demo's process group"
