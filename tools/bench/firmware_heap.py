"""Firmware heap: the smallest ``micropython -X heapsize=`` in which the real firmware completes
20 vends through the real gateway.

``python -m tools.bench.firmware_heap [--sizes 96,80,72,64,56] [--reps 3] [--vends 20] [--quick]``

A standalone gateway (embedded amqtt, SQLite) and one virtual ESP32 per run (MicroPython unix
port, firmware precompiled with mpy-cross as the flash step does, 20 ms motor) on loopback. Each
vend is a cash order: create it on the kiosk API, insert the coin, wait for ``completed`` (cash
credit journalled and acked, command verified, journalled, motor, result journalled and acked).
Every size runs ``--reps`` times on a fresh flash; a run fails on a MemoryError (or any other
end of the firmware) or a vend that does not complete.

Heap figures are ``gc.mem_free()`` after ``gc.collect()`` as the firmware reports them (``READY
heap_free`` after start; the simulator's ``state`` reply once connected and after every vend),
turned into bytes in use = heap total - free. The unix port is 64-bit: objects are about twice
their ESP32 size, so these figures are pessimistic for a board.

The floor is not measured software but the board: an ESP32 without PSRAM offers ~100 KB to
Python; the issue's goal is 64K. Both are printed with the ratio of the smallest passing size.
"""

import argparse
import asyncio
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from contracts.credentials import hash_secret, new_command_key, new_mqtt_secret
from contracts.orders import TERMINAL_ORDER_STATUSES, OrderStatus
from contracts.sync import CatalogItemState, MachineState, StateResponse
from edge.app import Gateway
from edge.settings import GatewaySettings
from tools.virtual_esp32 import VirtualDevice
from tools.virtual_esp32.flash import venv_tool

PRICE = 1000
MOTOR_MS = 20
ESP32_HEAP_K = 100  # ESP32 without PSRAM: what MicroPython gets for its heap
GOAL_K = 64
VEND_TIMEOUT_S = 15.0


@dataclass
class Run:
    size_k: int
    ok: bool = False
    why: str = ""
    vends: int = 0
    ready_used: int | None = None
    connected_used: int | None = None
    after_used: int | None = None
    peak_used: int | None = None  # highest post-collect figure seen
    seconds: float = 0.0
    samples: list[int] = field(default_factory=list)


def heap_total(size_k: int) -> int:
    """What gc.mem_free() + gc.mem_alloc() come to under -X heapsize=<size_k>K."""
    out = subprocess.run(
        [venv_tool("micropython"), "-X", f"heapsize={size_k}K", "-c",
         "import gc\nprint(gc.mem_free() + gc.mem_alloc())"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    return int(out.stdout.strip())


def _machine(machine_id: str, secret_hash: str, key: str, stock: int) -> MachineState:
    item = CatalogItemState(
        id=f"{machine_id}-A1", slot="A1", name="Water", price=PRICE, currency="INR",
        quantity=stock,
    )  # fmt: skip
    return MachineState(
        id=machine_id, tenant_id="bench", site_id="bench", name=machine_id, status="active",
        mqtt_secret_hash=secret_hash, command_key=key, catalog=[item], version=1,
    )  # fmt: skip


async def _vend(http: aiohttp.ClientSession, device: VirtualDevice, machine_id: str) -> None:
    body = {
        "machine_id": machine_id,
        "items": [{"id": f"{machine_id}-A1", "quantity": 1}],
        "payment_method": "cash",
    }
    async with http.post("/api/v1/orders", json=body) as response:
        if response.status != 201:
            raise RuntimeError(f"order refused: {response.status} {await response.text()}")
        order_id = (await response.json())["data"]["id"]
    async with http.get(f"/api/v1/orders/{order_id}/events") as stream:
        await device.sim("coin", amount=PRICE)
        async for line in stream.content:
            if not line.startswith(b"data:"):
                continue
            status = json.loads(line[len(b"data:") :])["status"]
            if status == OrderStatus.COMPLETED:
                return
            if status in TERMINAL_ORDER_STATUSES:
                raise RuntimeError(f"order ended {status}")
    raise RuntimeError("order stream ended before completion")


async def _watched(vend: Coroutine[None, None, None], device: VirtualDevice) -> None:
    """The vend, or RuntimeError as soon as the firmware prints FATAL (it then exits)."""
    task = asyncio.create_task(vend)
    death = asyncio.create_task(device.wait_output(r"^FATAL", VEND_TIMEOUT_S, device.boot_line))
    try:
        async with asyncio.timeout(VEND_TIMEOUT_S):
            done, _ = await asyncio.wait({task, death}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()
        death.cancel()
        await asyncio.gather(task, death, return_exceptions=True)
    if task in done and task.exception() is None:
        return
    if task in done:
        raise task.exception()  # type: ignore[misc]
    raise RuntimeError("firmware ended (FATAL)")


def _failure(device: VirtualDevice, exc: BaseException | None) -> str:
    lines = device.output_lines
    for line in lines:
        if "MemoryError" in line:
            return "MemoryError: " + line.strip()[:100]
    for line in lines:
        if line.startswith("FATAL") or "Traceback" in line:
            return line.strip()[:100]
    if exc is not None:
        return f"{type(exc).__name__}: {exc}"[:100]
    return "?"


async def _one_run(
    gateway: Gateway, http: aiohttp.ClientSession, flash: Path, mid: str, creds: tuple[str, str],
    size_k: int, total: int, vends: int, verbose: bool,
) -> Run:  # fmt: skip
    run = Run(size_k)
    VirtualDevice.install(
        flash,
        {
            "machine_id": mid, "mqtt_host": "127.0.0.1", "mqtt_port": gateway.mqtt_port,
            "mqtt_password": creds[0], "command_key": creds[1],
            "sim_slots": {"A1": 2 * vends}, "motor_ms": MOTOR_MS, "drop_timeout_ms": 500,
            "resend_interval_s": 1, "backoff_min_ms": 100, "backoff_max_ms": 1000,
        },
    )  # fmt: skip
    device = VirtualDevice(flash, heapsize=f"{size_k}K")
    started = time.perf_counter()
    error: BaseException | None = None
    try:
        await device.start()
        ready = await device.wait_output(r"^READY heap_free (\d+)$", 15, device.boot_line)
        run.ready_used = total - int(ready.group(1))
        online = await device.wait_output(r"^(LINK ready|FATAL.*)$", 15, device.boot_line)
        if online.group(1) != "LINK ready":
            raise RuntimeError("firmware ended before connecting")
        run.connected_used = total - int(str((await device.sim("state"))["heap_free"]))
        run.samples.append(run.connected_used)
        for _ in range(vends):
            await _watched(_vend(http, device, mid), device)
            run.vends += 1
            run.samples.append(total - int(str((await device.sim("state"))["heap_free"])))
            if not device.running:
                raise RuntimeError("firmware exited")
        run.after_used = run.samples[-1]
        if any("MemoryError" in line for line in device.output_lines):
            raise RuntimeError("MemoryError in the output")
        run.ok = True
    except Exception as exc:  # any end of the firmware is a failed run, with its reason
        error = exc
    finally:
        run.seconds = time.perf_counter() - started
        await device.close()
    if run.samples:
        run.peak_used = max(run.samples)
    if not run.ok:
        run.why = _failure(device, error)
        if verbose:
            print("\n".join("    | " + line for line in device.output_lines[-25:]))
    return run


def _fmt(n: float | None) -> str:
    return "-" if n is None else f"{n:,.0f}"


async def run(sizes: list[int], reps: int, vends: int, root: Path, verbose: bool = False) -> int:
    totals = {k: heap_total(k) for k in sizes}
    settings = GatewaySettings(
        data_dir=root / "gateway", http_port=0, mqtt_port=0, zeroconf_enabled=False,
        engine_tick_s=0.2,
        kiosk_max_open_orders_per_client=10_000, kiosk_orders_per_minute_per_client=1_000_000,
        kiosk_max_reserved_units_per_client=10_000,
    )  # fmt: skip
    plan = [(k, r) for k in sizes for r in range(reps)]
    ids = {p: f"HEAP{p[0]}K{p[1]}" for p in plan}
    creds = {mid: (new_mqtt_secret(), new_command_key()) for mid in ids.values()}
    results: dict[int, list[Run]] = {k: [] for k in sizes}
    async with Gateway(settings) as gateway:
        await gateway.store.apply_state(
            StateResponse(
                cursor=1,
                machines=[
                    _machine(m, hash_secret(s, iterations=1000), key, 2 * vends)
                    for m, (s, key) in creds.items()
                ],
            )
        )
        async with aiohttp.ClientSession(base_url=gateway.http_url) as http:
            for size_k, rep in plan:
                mid = ids[(size_k, rep)]
                one = await _one_run(
                    gateway, http, root / f"flash-{mid}", mid, creds[mid], size_k,
                    totals[size_k], vends, verbose,
                )  # fmt: skip
                results[size_k].append(one)
                state = "ok" if one.ok else f"FAILED after {one.vends} vends ({one.why})"
                print(
                    f"  {size_k:>3}K run {rep + 1}: {state}; in use: ready {_fmt(one.ready_used)}"
                    f", connected {_fmt(one.connected_used)}, after {one.vends} vends "
                    f"{_fmt(one.samples[-1] if one.samples else None)} B  ({one.seconds:.1f} s)",
                    flush=True,
                )
    print()
    print(f"{'heap':>5} {'total B':>8} {'passed':>7} {'ready':>7} {'connected':>10} "
          f"{'after':>7} {'peak':>7} {'B/vend':>7}")  # fmt: skip
    passing: list[int] = []
    for size_k in sizes:
        rs = results[size_k]
        ok = [r for r in rs if r.ok]
        if len(ok) == len(rs):
            passing.append(size_k)

        def med(values: list[int | None]) -> float | None:
            got = [v for v in values if v is not None]
            return statistics.median(got) if got else None

        per_vend = med(
            [
                (r.after_used - r.connected_used) // vends
                for r in ok
                if r.after_used is not None and r.connected_used is not None
            ]
        )
        print(
            f"{size_k:>4}K {totals[size_k]:>8} {len(ok):>3}/{len(rs):<3} "
            f"{_fmt(med([r.ready_used for r in rs])):>7} "
            f"{_fmt(med([r.connected_used for r in rs])):>10} "
            f"{_fmt(med([r.after_used for r in ok])):>7} {_fmt(med([r.peak_used for r in rs])):>7} "
            f"{_fmt(per_vend):>7}"
        )
    # the smallest size such that it and every larger size tried passed every run
    smallest = None
    for size_k in sorted(sizes, reverse=True):
        if size_k not in passing:
            break
        smallest = size_k
    print()
    print(f"floor: ESP32 Python heap ~{ESP32_HEAP_K}K; goal {GOAL_K}K; {vends} vends, {reps} runs"
          " per size")  # fmt: skip
    if smallest is None:
        print("ratio smallest passing heap / ESP32 heap: none passed")
        return 1
    goal = "met" if smallest <= GOAL_K else "NOT met"
    print(
        f"ratio smallest passing heap / ESP32 heap: {smallest}K / {ESP32_HEAP_K}K = "
        f"x{smallest / ESP32_HEAP_K:.2f} (goal {GOAL_K}K: {goal})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="firmware_heap", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="96,80,72,64,56", help="heap sizes in K, comma list")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--vends", type=int, default=20)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 96K and 64K, 1 run, 3 vends"
    )
    parser.add_argument("--verbose", action="store_true", help="print the output of failed runs")
    args = parser.parse_args(argv)
    sizes = [int(s.strip().rstrip("Kk")) for s in args.sizes.split(",") if s.strip()]
    if args.quick:
        sizes, args.reps, args.vends = [96, 64], 1, 3
    if not sizes or args.reps < 1 or args.vends < 1:
        parser.error("need at least one size, one run and one vend")
    sizes = sorted(set(sizes), reverse=True)
    logging.getLogger("amqtt").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="fw-heap-bench-") as tmp:
        asyncio.run(run(sizes, args.reps, args.vends, Path(tmp), args.verbose))
    return 0


if __name__ == "__main__":
    sys.exit(main())
