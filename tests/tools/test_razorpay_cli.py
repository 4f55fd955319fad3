"""``python -m tools.razorpay_server``: prints its URL first, serves the configured account,
stops cleanly on SIGTERM."""

import asyncio
import signal
import sys
from pathlib import Path

from aiohttp import ClientSession
from conftest import WEBHOOK_SECRET, Receiver, auth

ROOT = Path(__file__).resolve().parents[2]


async def test_cli_serves_and_stops(receiver: Receiver) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.razorpay_server",
        "--port",
        "0",
        "--account",
        f"rzp_test_cli:cli-secret:{WEBHOOK_SECRET}:{receiver.url}",
        "--retry-delays",
        "0.05,0.1",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        prefix = "razorpay test server on "
        assert first.startswith(prefix), first
        url = first.removeprefix(prefix)
        async with ClientSession(base_url=url, headers=auth("rzp_test_cli", "cli-secret")) as h:
            async with h.post(
                "/v1/payments/qr_codes",
                json={
                    "type": "upi_qr",
                    "usage": "single_use",
                    "fixed_amount": True,
                    "payment_amount": 1000,
                },
            ) as r:
                qr = await r.json()
            async with h.post(f"/_test/qr_codes/{qr['id']}/pay", json={}) as r:
                assert r.status == 200
        await receiver.wait_for(3)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 20)
    assert rc == 0
