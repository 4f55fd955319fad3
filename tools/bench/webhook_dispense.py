"""Webhook-to-dispense-command latency: a UPI payment at Razorpay until the gateway publishes the
dispense command.

``python -m tools.bench.webhook_dispense [--orders 30]``

Everything real, on loopback: the Razorpay test server (``tools.razorpay_server``), the cloud
(SQLite WAL) with the tenant's Razorpay provider pointing at it, an enrolled gateway (embedded
amqtt, SQLite) and one virtual ESP32 (the firmware in the MicroPython unix port, 50 ms motor).
Each order is a one-unit UPI order made on the kiosk API (the cloud creates its QR code at the
test server); then the customer "pays" it (``RazorpayTestServer.pay``), and the clock runs from
that call until the gateway's QoS 1 publish of the dispense command is acknowledged by the broker.
That covers: payment taken and its signed webhooks sent, HMAC checked, event and capture
committed in the cloud, the payment pushed down the gateway's channel, the order marked paid, the
command signed and persisted, published. The ``payment.captured`` webhook's 2xx (as the test
server logs it) splits the figure into "to the cloud" and "cloud to the command". Each order is
then left to complete (motor, drop sensor, result) before the next one starts.

The publish is observed in-process by wrapping the gateway's ``DeviceLink.send_dispense`` (the
broker's ACL lets no other client read a machine's command topic, and a second client with the
machine's id would take over the device's session). The cloud's webhook poller is set far out, so
every payment arrives by webhook.

Floors, same run and same processes: a signed webhook the cloud has already applied, POSTed
again to the cloud's listener (signature checked, answered 200 ``duplicate``: HTTP plus the
verification and dedupe lookup), and a bare QoS 1 publish from the gateway's client through the
same broker (publish to PUBACK).
"""

import argparse
import asyncio
import json
import logging
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from cloud.server import CloudServer
from cloud.settings import CloudSettings
from contracts import topics
from edge.app import Gateway
from edge.settings import GatewaySettings
from provisioning.cloud_api import CloudApi
from tools.razorpay_server import RazorpayTestServer
from tools.virtual_esp32 import VirtualDevice

PRICE = 1000
MOTOR_MS = 50
EMAIL, PASSWORD = "bench@bench.example", "bench password long enough"
STEP_TIMEOUT_S = 30.0  # every wait in the run is bounded by this
FLOOR_SAMPLES = 200


def _summary(name: str, seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    p99 = ms[max(0, int(len(ms) * 0.99 + 0.5) - 1)]
    row = {"p50": statistics.median(ms), "p99": p99, "max": ms[-1], "min": ms[0]}
    print(
        f"{name:<52} n={len(ms):<4} p50={row['p50']:7.2f} ms  p99={p99:7.2f} ms  "
        f"min={row['min']:7.2f} ms  max={row['max']:7.2f} ms"
    )
    return row


class PublishClock:
    """Wraps the gateway link's ``send_dispense``: when each machine's command was acked."""

    def __init__(self, gateway: Gateway) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self.acked_at: dict[str, float] = {}
        link = gateway.link
        original: Callable[[str, bytes], Awaitable[None]] = link.send_dispense

        async def timed(machine_id: str, payload: bytes) -> None:
            await original(machine_id, payload)
            now = time.perf_counter()
            # A resend of the same command keeps the first time.
            self.acked_at.setdefault(machine_id, now)
            self._events.setdefault(machine_id, asyncio.Event()).set()

        link.send_dispense = timed  # type: ignore[method-assign]

    def arm(self, machine_id: str) -> None:
        self.acked_at.pop(machine_id, None)
        self._events[machine_id] = asyncio.Event()

    async def wait(self, machine_id: str) -> float:
        async with asyncio.timeout(STEP_TIMEOUT_S):
            await self._events[machine_id].wait()
        return self.acked_at[machine_id]


async def _wait(probe: Callable[[], Awaitable[Any]], what: str) -> Any:
    try:
        async with asyncio.timeout(STEP_TIMEOUT_S):
            while True:
                value = await probe()
                if value:
                    return value
                await asyncio.sleep(0.02)
    except TimeoutError as exc:
        raise RuntimeError(f"gave up waiting for {what}") from exc


async def _upi_order(kiosk: aiohttp.ClientSession, machine_id: str, item_id: str) -> dict[str, Any]:
    body = {
        "machine_id": machine_id,
        "items": [{"id": item_id, "quantity": 1}],
        "payment_method": "upi",
    }
    async with kiosk.post("/api/v1/orders", json=body) as response:
        payload = await response.json()
        if response.status != 201:
            raise RuntimeError(f"UPI order refused: {payload}")
        return dict(payload["data"])


async def _completed(kiosk: aiohttp.ClientSession, order_id: str) -> None:
    async def done() -> bool:
        async with kiosk.get(f"/api/v1/orders/{order_id}") as response:
            status = (await response.json())["data"]["status"]
        if status in ("failed", "partially_completed", "cancelled"):
            raise RuntimeError(f"order {order_id} ended {status}")
        return bool(status == "completed")

    await _wait(done, f"order {order_id} to complete")


async def run(orders: int, root: Path) -> None:
    async with RazorpayTestServer(webhook_retry_delays=(0.2, 0.5, 1.0)) as rzp:
        cloud_settings = CloudSettings(
            database_url=f"sqlite+aiosqlite:///{root / 'cloud.db'}", data_dir=root / "cloud",
            http_port=0, sync_port=0, razorpay_api_url=rzp.url,
            razorpay_poll_after_s=3600.0,  # payments arrive by webhook, not by the poller
            # Cheap hashing: one login at setup, nothing in the measured path.
            password_hash_time_cost=1, password_hash_memory_cost=8192,
            password_hash_parallelism=1,
        )  # fmt: skip
        async with CloudServer(cloud_settings) as cloud, CloudApi(cloud.api_url) as admin:
            tenant_id = await cloud.create_tenant("Bench", EMAIL, PASSWORD)
            await admin.login(EMAIL, PASSWORD)
            creds = {
                "key_id": "rzp_test_BenchKey000001",
                "key_secret": secrets.token_hex(12),
                "webhook_secret": secrets.token_urlsafe(24),
            }
            body = {"provider": "razorpay"} | creds
            provider = await admin.request("PUT", "/payments/provider", body)
            rzp.add_account(
                creds["key_id"], creds["key_secret"], creds["webhook_secret"],
                provider["webhook_url"],
            )  # fmt: skip
            site_id = (await admin.create_site("Bench site", "Loopback"))["id"]
            token = await admin.enrollment_token(site_id)
            gateway_settings = GatewaySettings(
                data_dir=root / "gateway", http_port=0, mqtt_port=0, zeroconf_enabled=False,
                cloud_url=cloud.api_url, enroll_token=token, engine_tick_s=0.2,
                # One process plays every kiosk from one address: the per-client limits would
                # cap it.
                kiosk_max_open_orders_per_client=10_000,
                kiosk_orders_per_minute_per_client=1_000_000,
                kiosk_max_reserved_units_per_client=10_000,
            )  # fmt: skip
            async with Gateway(gateway_settings) as gateway:
                await _measure(rzp, cloud, admin, gateway, site_id, tenant_id, orders, root)


async def _measure(
    rzp: RazorpayTestServer,
    cloud: CloudServer,
    admin: CloudApi,
    gateway: Gateway,
    site_id: str,
    tenant_id: str,
    orders: int,
    root: Path,
) -> None:
    async def enrolled() -> bool:
        return bool(gateway.cloud.status()["enrolled"])

    await _wait(enrolled, "the gateway to enrol")
    catalog = [{"slot": "A1", "name": "Water", "price": PRICE, "quantity": orders + 5}]
    onboarded = await admin.onboard_machine(name="Bench", site_id=site_id, catalog=catalog)
    machine_id = onboarded["machine"]["id"]
    item_id = onboarded["machine"]["catalog"][0]["id"]

    async def pulled() -> bool:
        return any(m.id == machine_id for m in await gateway.store.list_machines())

    await _wait(pulled, "the gateway to pull the machine")
    flash = root / "flash"
    VirtualDevice.install(
        flash,
        {
            "machine_id": machine_id, "mqtt_host": "127.0.0.1", "mqtt_port": gateway.mqtt_port,
            "mqtt_password": onboarded["credentials"]["mqtt_password"],
            "command_key": onboarded["credentials"]["command_key"],
            "sim_slots": {"A1": orders + 5}, "motor_ms": MOTOR_MS, "drop_timeout_ms": 500,
        },
    )  # fmt: skip
    clock = PublishClock(gateway)
    async with VirtualDevice(flash) as device, aiohttp.ClientSession(
        base_url=gateway.http_url
    ) as kiosk, aiohttp.ClientSession() as http:  # fmt: skip
        await device.wait_online(timeout=STEP_TIMEOUT_S)

        async def upi_offered() -> bool:
            async with kiosk.get(f"/api/v1/machines/{machine_id}/payment-methods") as response:
                methods = (await response.json())["data"]["payment_methods"]
            return any(m["method"] == "upi" and m["available"] for m in methods)

        await _wait(upi_offered, "UPI to be offered at the machine")

        async def one_order() -> tuple[float, float, float]:
            started = time.perf_counter()
            order = await _upi_order(kiosk, machine_id, item_id)
            qr_shown = time.perf_counter() - started
            qr_id = order["payment"]["qr_code_id"]
            clock.arm(machine_id)
            wall, paid_at = time.time(), time.perf_counter()
            payment = rzp.pay(qr_id)
            published = await clock.wait(machine_id) - paid_at
            captured = next(
                d
                for d in rzp.deliveries
                if d.event == "payment.captured" and payment["id"] in d.body.decode()
            )

            def answered() -> bool:
                return any(a.status == 200 for a in captured.attempts)

            await rzp.wait_until(answered, within=STEP_TIMEOUT_S)
            to_cloud = min(a.at for a in captured.attempts if a.status == 200) - wall
            await _completed(kiosk, order["id"])
            return qr_shown, published, to_cloud

        await one_order()  # warm-up: connections, caches, first-use imports
        results = [await one_order() for _ in range(orders)]

        # Floors, same processes: a signed, already applied webhook posted again, and a bare
        # QoS 1 publish through the same broker.
        delivery = rzp.delivered("payment.captured")[-1]
        headers = {
            "Content-Type": "application/json",
            "X-Razorpay-Signature": delivery.signature,
            "X-Razorpay-Event-Id": delivery.event_id,
        }
        http_floor = []
        for _ in range(FLOOR_SAMPLES):
            started = time.perf_counter()
            async with http.post(delivery.url or "", data=delivery.body, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"duplicate webhook answered {r.status}")
            http_floor.append(time.perf_counter() - started)
        mqtt_floor = []
        floor_topic = topics.topic("bench-floor", "x")
        payload = json.dumps({"floor": True}).encode()
        for _ in range(FLOOR_SAMPLES):
            started = time.perf_counter()
            await gateway.link.publish(floor_topic, payload)
            mqtt_floor.append(time.perf_counter() - started)

    print(f"{orders} UPI orders, one machine, one after another (tenant {tenant_id[:8]})")
    _summary("kiosk UPI order -> QR code shown (Razorpay QR create)", [r[0] for r in results])
    total = _summary("pay -> dispense command published (PUBACK)", [r[1] for r in results])
    _summary("  of which pay -> payment.captured webhook 2xx", [r[2] for r in results])
    _summary("  of which webhook 2xx -> command published", [r[1] - r[2] for r in results])
    web = _summary("floor: signed duplicate webhook round trip", http_floor)
    mqtt = _summary("floor: bare QoS 1 publish round trip", mqtt_floor)
    floor = web["p50"] + mqtt["p50"]
    print(
        f"ratio pay->published / (webhook floor + publish floor): p50 x{total['p50'] / floor:.1f}"
        f" ({total['p50']:.2f} / {floor:.2f} ms), p99 x{total['p99'] / floor:.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="webhook_dispense", description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=30)
    args = parser.parse_args(argv)
    if not 1 <= args.orders <= 1000:
        parser.error("--orders must be between 1 and 1000")
    logging.basicConfig(level=logging.ERROR)  # figures only; warnings would interleave
    logging.getLogger("amqtt").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="webhook-bench-") as tmp:
        asyncio.run(run(args.orders, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
