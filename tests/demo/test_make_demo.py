"""``make demo`` as a newcomer runs it: a whole site comes up, a kiosk client asking for the
sandbox (which gives goods away) is refused, a UPI purchase goes through the cloud's Razorpay
adapter and the local Razorpay test server (paid as the announcement says, with its pay
endpoint), the announced coin command puts cash on a machine, and Ctrl-C leaves no process
behind."""

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from polling import wait_for

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
        "razorpay_url",
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
        # The sandbox gives goods away; the demo runs real UPI (through the Razorpay test
        # server), so a kiosk client asking for the sandbox gets a refusal and nothing else.
        body = {
            "machine_id": machine["id"],
            "items": [{"id": item["id"], "quantity": 1}],
            "payment_method": "sandbox",
        }
        async with kiosk.post("/api/v1/orders", json=body) as response:
            refused = await response.json()
            assert response.status == 503, refused
        assert refused["error"]["code"] == "payment_unavailable"
        assert refused["error"]["details"]["reason"] == "not_enabled"

    await _buy_by_upi_through_razorpay(info)
    await _coin_command_puts_cash_on_the_machine(info, log_path)

    pids = [int(pid) for pid in info["pids"].values()]
    assert "razorpay" in info["pids"]
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


async def _buy_by_upi_through_razorpay(info: dict) -> None:  # type: ignore[type-arg]
    """The contract scripts outside rely on: a kiosk order with ``payment_method: "upi"`` gets a
    Razorpay QR code from the test server, and ``POST {razorpay_url}/_test/qr_codes/{id}/pay``
    pays it; the webhooks reach the cloud, the gateway hears of it and the machine vends."""
    machine = info["machines"][1]
    rzp = info["razorpay_url"]
    async with aiohttp.ClientSession(base_url=info["gateway_url"]) as kiosk:
        async with kiosk.get(f"/api/v1/machines/{machine['id']}/payment-methods") as response:
            methods = (await response.json())["data"]["payment_methods"]
        assert {"method": "upi", "available": True} in [
            {"method": m["method"], "available": m["available"]} for m in methods
        ], methods
        async with kiosk.get(f"/api/v1/machines/{machine['id']}/catalog") as response:
            catalog = (await response.json())["data"]
        item = next(i for i in catalog if i["quantity"] > 0)
        body = {
            "machine_id": machine["id"],
            "items": [{"id": item["id"], "quantity": 1}],
            "payment_method": "upi",
        }
        headers = {"Idempotency-Key": "demo-test-upi-order-1"}
        async with kiosk.post("/api/v1/orders", json=body, headers=headers) as response:
            assert response.status == 201, await response.text()
            order = (await response.json())["data"]
        assert order["status"] == "awaiting_payment", order
        payment = order["payment"]
        assert payment["provider"] == "razorpay", payment
        assert payment["status"] == "created", payment
        assert payment["qr_code_id"].startswith("qr_"), payment
        assert payment["upi_uri"].startswith("upi://pay?"), payment
        assert f"am={item['price'] / 100:.2f}" in payment["upi_uri"], payment

        async with aiohttp.ClientSession() as phone:
            # The QR code the kiosk shows is the test server's, for exactly this order's amount.
            async with phone.get(f"{rzp}/_test/state") as response:
                state = await response.json()
            [qr] = [q for q in state["qr_codes"] if q["id"] == payment["qr_code_id"]]
            assert (qr["payment_amount"], qr["status"]) == (item["price"], "active"), qr
            assert qr["notes"]["order_id"] == order["id"], qr
            async with phone.post(f"{rzp}/_test/qr_codes/{payment['qr_code_id']}/pay") as paid:
                assert paid.status == 200, await paid.text()
                captured = await paid.json()
        assert (captured["status"], captured["amount"]) == ("captured", item["price"])

        async def ended() -> dict | None:  # type: ignore[type-arg]
            async with kiosk.get(f"/api/v1/orders/{order['id']}") as response:
                current = (await response.json())["data"]
            return (
                current
                if current["status"] not in ("awaiting_payment", "paid", "dispensing")
                else None
            )

        final = await wait_for(ended, within=60, interval=0.2)
    assert final["status"] == "completed", final
    assert final["paid_amount"] == item["price"], final
    assert final["payment"]["status"] == "captured", final["payment"]
    assert [(i["dispensed"], i["failed"]) for i in final["items"]] == [(1, 0)], final["items"]
    assert (final["refund_amount"], final["refunds"]) == (0, []), final

    async with CloudApi(info["cloud_url"]) as admin:
        await admin.login(info["admin_email"], info["admin_password"])

        async def in_cloud() -> dict | None:  # type: ignore[type-arg]
            listed = [o for o in await admin.orders() if o["id"] == order["id"]]
            return listed[0] if listed and listed[0]["status"] == "completed" else None

        await wait_for(in_cloud, within=60, interval=0.2)
        provider = await admin.payment_provider()
    assert (provider["provider"], provider["upi_enabled"]) == ("razorpay", True), provider
    assert provider["key_id"] == info["razorpay_key_id"], provider


def _announced_coin_command(info: dict, log_path: Path) -> list[str]:  # type: ignore[type-arg]
    """The coin command the announcement prints for the first machine, and the pay line."""
    machine = info["machines"][0]
    text = log_path.read_text()
    assert f"curl -X POST {info['razorpay_url']}/_test/qr_codes/<qr_code_id>/pay" in text
    assert f"{info['razorpay_url']}/_test/ and press Pay" in text
    announced = [
        line.split(": ", 1)[1].strip()
        for line in text.splitlines()
        if "insert ₹10 in cash:" in line and f"--port {machine['sim_port']} " in line
    ]
    assert len(announced) == 1, text[-3000:]
    argv = announced[0].split()
    assert argv[1:] == ["-m", "tools.demo", "coin", "--port", str(machine["sim_port"]),
                        "--amount", "1000"]  # fmt: skip
    return argv


async def _coin_command_puts_cash_on_the_machine(info: dict, log_path: Path) -> None:  # type: ignore[type-arg]
    """The coin command the announcement prints (no ``nc`` needed) works as printed: the cash
    becomes the machine's credit at the gateway."""
    machine = info["machines"][0]
    argv = _announced_coin_command(info, log_path)
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert "₹10.00 in cash inserted" in out.decode()

    async with aiohttp.ClientSession(base_url=info["gateway_url"]) as kiosk:

        async def credited() -> bool:
            async with kiosk.get("/api/v1/machines") as response:
                machines = (await response.json())["data"]
            return any(m["id"] == machine["id"] and m["machine_credit"] == 1000 for m in machines)

        await wait_for(credited, within=30, interval=0.2)
