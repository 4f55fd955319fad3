"""Vend latency through the real gateway and the real firmware.

``python -m tools.bench.vend_latency [--vends 20] [--machines 2]``

A standalone gateway (embedded amqtt, SQLite) and virtual ESP32s (MicroPython unix port, 96K heap,
50 ms motor) on loopback. Each vend is a cash order: create it on the kiosk API, insert the coins,
and time from the coin to ``completed`` (payment seen, command signed, persisted, published,
verified, journalled, motor, drop sensor, result journalled, published, persisted, acked).

Baseline, same run: the same vends on one machine, one after another. Then the same number of
vends spread over ``--machines`` machines at once; the ratio shows what concurrency costs.
"""

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from contracts.credentials import hash_secret, new_command_key, new_mqtt_secret
from contracts.orders import TERMINAL_ORDER_STATUSES, OrderStatus
from contracts.sync import CatalogItemState, MachineState, StateResponse
from edge.app import Gateway
from edge.settings import GatewaySettings
from tools.virtual_esp32 import VirtualDevice

PRICE = 1000
MOTOR_MS = 50


def _machine(machine_id: str, secret_hash: str, key: str, stock: int) -> MachineState:
    item = CatalogItemState(
        id=f"{machine_id}-A1", slot="A1", name="Water", price=PRICE, currency="INR",
        quantity=stock,
    )  # fmt: skip
    return MachineState(
        id=machine_id, tenant_id="bench", site_id="bench", name=machine_id, status="active",
        mqtt_secret_hash=secret_hash, command_key=key, catalog=[item], version=1,
    )  # fmt: skip


async def _vend(http: aiohttp.ClientSession, device: VirtualDevice, machine_id: str) -> float:
    body = {
        "machine_id": machine_id,
        "items": [{"id": f"{machine_id}-A1", "quantity": 1}],
        "payment_method": "cash",
    }
    async with http.post("/api/v1/orders", json=body) as response:
        order_id = (await response.json())["data"]["id"]
    async with http.get(f"/api/v1/orders/{order_id}/events") as stream:
        started = time.perf_counter()
        await device.sim("coin", amount=PRICE)
        async for line in stream.content:
            if not line.startswith(b"data:"):
                continue
            seen = time.perf_counter()
            status = json.loads(line[len(b"data:") :])["status"]
            if status == OrderStatus.COMPLETED:
                return seen - started
            # Any other end (failed, partially_completed, cancelled): the unit did not come out,
            # so this vend is no figure; the order's refund or machine credit is the gateway's.
            if status in TERMINAL_ORDER_STATUSES:
                raise RuntimeError(f"vend of {order_id} ended {status}, not completed")
    raise RuntimeError(f"stream of {order_id} ended before completion")


def _summary(name: str, seconds: list[float], wall: float) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[max(0, int(len(ms) * 0.95) - 1)]
    row = {"p50": statistics.median(ms), "p95": p95, "max": ms[-1], "rate": len(ms) / wall}
    print(
        f"{name:<28} n={len(ms):<4} p50={row['p50']:7.1f} ms  p95={p95:7.1f} ms  "
        f"max={row['max']:7.1f} ms  {row['rate']:5.2f} vends/s"
    )
    return row


async def run(vends: int, machines: int, root: Path) -> None:
    settings = GatewaySettings(
        data_dir=root / "gateway", http_port=0, mqtt_port=0, zeroconf_enabled=False,
        engine_tick_s=0.2,
        # One process plays every kiosk from one address: the per-client limits would cap it.
        kiosk_max_open_orders_per_client=10_000, kiosk_orders_per_minute_per_client=1_000_000,
        kiosk_max_reserved_units_per_client=10_000,
    )  # fmt: skip
    ids = [f"BENCH{i}" for i in range(machines)]
    secrets = {mid: new_mqtt_secret() for mid in ids}
    keys = {mid: new_command_key() for mid in ids}
    async with Gateway(settings) as gateway:
        await gateway.store.apply_state(
            StateResponse(
                cursor=1,
                machines=[
                    _machine(m, hash_secret(secrets[m], iterations=1000), keys[m], 2 * vends)
                    for m in ids
                ],
            )
        )
        devices: dict[str, VirtualDevice] = {}
        for mid in ids:
            flash = root / f"flash-{mid}"
            VirtualDevice.install(
                flash,
                {
                    "machine_id": mid, "mqtt_host": "127.0.0.1", "mqtt_port": gateway.mqtt_port,
                    "mqtt_password": secrets[mid], "command_key": keys[mid],
                    "sim_slots": {"A1": 2 * vends}, "motor_ms": MOTOR_MS, "drop_timeout_ms": 500,
                },
            )  # fmt: skip
            devices[mid] = VirtualDevice(flash)
            await devices[mid].start()
        try:
            for device in devices.values():
                await device.wait_online(timeout=30)
            async with aiohttp.ClientSession(base_url=gateway.http_url) as http:
                first = ids[0]
                await _vend(http, devices[first], first)  # warm-up: connections, caches
                started = time.perf_counter()
                baseline = [await _vend(http, devices[first], first) for _ in range(vends)]
                wall = time.perf_counter() - started
                base = _summary("baseline: 1 machine, serial", baseline, wall)

                async def per_machine(mid: str, count: int) -> list[float]:
                    return [await _vend(http, devices[mid], mid) for _ in range(count)]

                started = time.perf_counter()
                share = [vends // machines + (i < vends % machines) for i in range(machines)]
                results = await asyncio.gather(
                    *(per_machine(mid, n) for mid, n in zip(ids, share, strict=True))
                )
                spread = [s for r in results for s in r]
                name = f"{machines} machines at once"
                wide = _summary(name, spread, time.perf_counter() - started)
                print(
                    f"ratio {machines} machines / baseline: p50 x{wide['p50'] / base['p50']:.2f}, "
                    f"throughput x{wide['rate'] / base['rate']:.2f}  (motor {MOTOR_MS} ms)"
                )
        finally:
            for device in devices.values():
                await device.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vend_latency", description=__doc__.splitlines()[0])
    parser.add_argument("--vends", type=int, default=20)
    parser.add_argument("--machines", type=int, default=2)
    args = parser.parse_args(argv)
    if args.vends < 1 or args.machines < 1:
        parser.error("--vends and --machines must be at least 1")
    logging.getLogger("amqtt").setLevel(logging.ERROR)  # its disconnect notes are not figures
    with tempfile.TemporaryDirectory(prefix="vend-bench-") as tmp:
        asyncio.run(run(args.vends, args.machines, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
