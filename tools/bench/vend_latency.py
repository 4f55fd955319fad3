"""Vend overhead through the real gateway and the real firmware, against the broker's floor.

``python -m tools.bench.vend_latency [--machines 1,4,20] [--samples 100] [--quick]
[--profile FILE]``

A standalone gateway (embedded amqtt, SQLite, default settings) runs in its own process, and
one virtual ESP32 per machine (the real firmware in the MicroPython unix port, 96K heap) with
the motor at 0 ms and the drop sensor at 0 ms. Each vend is a cash order paid from machine
credit inserted beforehand, so the time runs from the kiosk's ``POST /api/v1/orders`` to the
order's ``completed`` event on its SSE stream: order persisted and paid, dispatcher, dispense
command signed and persisted, published, verified and journalled on the device, motor (0 ms),
result signed, journalled, published, verified and persisted by the gateway, order completed.

At each concurrency N (``--machines``, a list) the same run measures, one after the other:

- the floor: N pairs of MQTT clients on the same broker, each pair doing a command + result
  round trip (a QoS 1 publish of a command-sized message to a topic the other client answers
  with a QoS 1 publish of a result-sized message), all N pairs at once;
- the vends: N machines at once, each one vend after another.

It prints p50/p99 of both and their ratios. ``--profile FILE`` runs the gateway under py-spy
(``.txt``: collapsed stacks, else an SVG flame graph). ``--quick`` is a smoke run (seconds).

The floor clients log in with the gateway's own MQTT password under client ids this benchmark
adds (``bench-floor-*``) in the gateway process it starts: they take the gateway's ACL path,
on topics no part of the gateway subscribes to, so the floor loads the broker and nothing else.
"""

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from amqtt.client import MQTTClient
from amqtt.mqtt.constants import QOS_1

from contracts.credentials import hash_secret, new_command_key, new_mqtt_secret
from contracts.orders import TERMINAL_ORDER_STATUSES, OrderStatus
from contracts.sync import CatalogItemState, MachineState, StateResponse
from edge.app import Gateway
from edge.settings import GatewaySettings
from tools.virtual_esp32 import VirtualDevice
from tools.virtual_esp32 import flash as flash_module

PRICE = 1000
MOTOR_MS = 0  # the firmware takes any non-negative value; 0 leaves only the overhead
DROP_TIMEOUT_MS = 0  # only waited on a jam or an empty slot, neither of which happens here
FLOOR_PREFIX = "bench-floor-"
# Sizes of a real signed dispense command and its signed result (measured on this firmware).
COMMAND_BYTES = 420
RESULT_BYTES = 400
_MOTOR_LINE = re.compile(r"^SIM_MOTOR \S+ (\S+)")


# --- the gateway process -------------------------------------------------------------------------


def _machine(machine_id: str, secret_hash: str, key: str, stock: int) -> MachineState:
    item = CatalogItemState(
        id=f"{machine_id}-A1", slot="A1", name="Water", price=PRICE, currency="INR",
        quantity=stock,
    )  # fmt: skip
    return MachineState(
        id=machine_id, tenant_id="bench", site_id="bench", name=machine_id, status="active",
        mqtt_secret_hash=secret_hash, command_key=key, catalog=[item], version=1,
    )  # fmt: skip


def _admit_floor_clients(gateway: Gateway) -> None:
    """Let ``bench-floor-*`` clients with the gateway's password in, with the gateway's rights
    (this process only: it is the benchmark's gateway)."""
    broker = gateway._broker  # the benchmark's own gateway
    assert broker is not None
    authority = broker._authority
    password = gateway.settings.mqtt_password
    user = gateway.settings.gateway_client_id
    plain_is_gateway = authority.is_gateway
    plain_authenticate = authority.authenticate

    def floor(session: Any) -> bool:
        return (session.client_id or "").startswith(FLOOR_PREFIX) and session.username == user

    def is_gateway(session: Any) -> bool:
        return plain_is_gateway(session) or floor(session)

    async def authenticate(session: Any) -> bool:
        if floor(session):
            return (session.password or "") == password
        return await plain_authenticate(session)

    authority.is_gateway = is_gateway  # type: ignore[method-assign]
    authority.authenticate = authenticate  # type: ignore[method-assign]


async def _serve_gateway(spec: dict[str, Any]) -> None:
    settings = GatewaySettings(
        data_dir=Path(spec["data_dir"]), http_port=0, mqtt_port=0, zeroconf_enabled=False,
        gateway_mqtt_password=spec["gateway_password"],
        # One process plays every kiosk from one address: the per-client limits would cap it.
        kiosk_max_open_orders_per_client=100_000, kiosk_orders_per_minute_per_client=10_000_000,
        kiosk_max_reserved_units_per_client=100_000,
    )  # fmt: skip
    async with Gateway(settings) as gateway:
        await gateway.store.apply_state(
            StateResponse(
                cursor=1,
                machines=[
                    _machine(m["id"], m["secret_hash"], m["key"], m["stock"])
                    for m in spec["machines"]
                ],
            )
        )
        _admit_floor_clients(gateway)
        timings = _time_calls(gateway) if spec.get("trace") else None
        print(json.dumps({"http_url": gateway.http_url, "mqtt_port": gateway.mqtt_port}))
        sys.stdout.flush()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the benchmark closes stdin
        if timings is not None:
            rows = sorted(timings.items(), key=lambda kv: -sum(kv[1]))
            for name, times in rows[:14]:
                ms = sorted(t * 1000 for t in times)
                print(
                    f"  gateway {name:<28} n={len(ms):<5} p50={statistics.median(ms):7.2f} ms  "
                    f"p99={ms[max(0, math.ceil(0.99 * len(ms)) - 1)]:7.2f} ms",
                    file=sys.stderr,
                )


_TRACED = (
    "create_order", "orders_to_dispense", "next_command", "command_result",
    "record_signed_message", "get_order", "machine_secret_hash", "touch_machine", "set_presence",
)  # fmt: skip


def _time_calls(gateway: Gateway) -> dict[str, list[float]]:
    """Wall time of each store call on the vend path and of the link's publishes (this
    process only): where a vend waits, hop by hop."""
    timings: dict[str, list[float]] = {}

    def wrap(owner: object, name: str, label: str) -> None:
        plain = getattr(owner, name)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await plain(*args, **kwargs)
            finally:
                timings.setdefault(label, []).append(time.perf_counter() - started)

        setattr(owner, name, timed)

    for name in _TRACED:
        if hasattr(gateway.store, name):
            wrap(gateway.store, name, f"store.{name}")
    link = gateway._link  # the benchmark's own gateway
    if link is not None:
        wrap(link, "publish", "link.publish (QoS 1)")
    return timings


# --- measurements --------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    seconds: list[float]
    wall: float
    parts: dict[str, list[float]] = field(default_factory=dict)

    def pct(self, q: float) -> float:
        ms = sorted(s * 1000 for s in self.seconds)
        return ms[max(0, math.ceil(q * len(ms)) - 1)]

    @property
    def p50(self) -> float:
        return statistics.median(s * 1000 for s in self.seconds)

    @property
    def p99(self) -> float:
        return self.pct(0.99)

    def line(self) -> str:
        return (
            f"  {self.name:<30} n={len(self.seconds):<4} p50={self.p50:8.2f} ms  "
            f"p99={self.p99:8.2f} ms  max={max(self.seconds) * 1000:8.2f} ms  "
            f"{len(self.seconds) / self.wall:7.1f}/s"
        )


def _floor_client(index: int, role: str) -> MQTTClient:
    return MQTTClient(
        client_id=f"{FLOOR_PREFIX}{role}-{index}",
        config={"auto_reconnect": False, "keep_alive": 30, "cleansession": True},
    )


async def floor(uri: str, pairs: int, trips: int) -> Row:
    """``pairs`` requester/responder pairs at once, ``trips`` round trips each (one warm-up)."""
    command = b"c" * COMMAND_BYTES
    result = b"r" * RESULT_BYTES
    clients: list[MQTTClient] = []
    tasks: list[asyncio.Task[None]] = []

    async def respond(client: MQTTClient, reply_to: str) -> None:
        while True:
            await client.deliver_message()
            await client.publish(reply_to, result, qos=QOS_1)

    async def request(client: MQTTClient, topic: str) -> list[float]:
        times = []
        for n in range(trips + 1):
            started = time.perf_counter()
            await client.publish(topic, command, qos=QOS_1)
            await client.deliver_message()
            if n:
                times.append(time.perf_counter() - started)
        return times

    try:
        requesters = []
        for i in range(pairs):
            req, res = _floor_client(i, "req"), _floor_client(i, "res")
            clients += [req, res]
            await req.connect(uri)
            await res.connect(uri)
            await req.subscribe([(f"bench/floor/{i}/result", QOS_1)])
            await res.subscribe([(f"bench/floor/{i}/command", QOS_1)])
            tasks.append(asyncio.create_task(respond(res, f"bench/floor/{i}/result")))
            requesters.append((req, f"bench/floor/{i}/command"))
        started = time.perf_counter()
        results = await asyncio.gather(*(request(c, t) for c, t in requesters))
        wall = time.perf_counter() - started
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in clients:
            with contextlib.suppress(Exception):
                await client.disconnect()
    return Row(f"floor: {pairs} pair(s)", [s for r in results for s in r], wall)


class Machine:
    def __init__(self, machine_id: str, device: VirtualDevice) -> None:
        self.id = machine_id
        self.device = device
        self.motor_at: dict[str, float] = {}  # cmd_id -> when its SIM_MOTOR line arrived
        add_line = device._add_line  # timestamps for the breakdown

        def timed(text: str) -> None:
            match = _MOTOR_LINE.match(text)
            if match:
                self.motor_at[match.group(1)] = time.perf_counter()
            add_line(text)

        device._add_line = timed  # type: ignore[method-assign]

    async def credit(self, http: aiohttp.ClientSession, amount: int) -> None:
        """Insert ``amount`` and wait until the gateway holds it as machine credit."""
        mark = len(self.device.output_lines)
        await self.device.sim("coin", amount=amount)
        await self.device.wait_output(r"^EVENTS acked [1-9]", 30, mark)
        del http

    async def vend(self, http: aiohttp.ClientSession) -> tuple[float, dict[str, float]]:
        body = {
            "machine_id": self.id,
            "items": [{"id": f"{self.id}-A1", "quantity": 1}],
            "payment_method": "cash",
        }
        started = time.perf_counter()
        async with http.post("/api/v1/orders", json=body) as response:
            reply = await response.json()
        if "data" not in reply:
            raise RuntimeError(f"order on {self.id} refused: {response.status} {reply}")
        order = reply["data"]
        posted = time.perf_counter()
        order_id = order["id"]
        if order["status"] != OrderStatus.PAID:
            raise RuntimeError(f"order {order_id} is {order['status']}, not paid from credit")
        async with http.get(f"/api/v1/orders/{order_id}/events") as stream:
            async for line in stream.content:
                if not line.startswith(b"data:"):
                    continue
                seen = time.perf_counter()
                status = json.loads(line[len(b"data:") :])["status"]
                if status == OrderStatus.COMPLETED:
                    motor = max((t for t in self.motor_at.values() if t >= posted), default=posted)
                    self.motor_at.clear()
                    parts = {"post": posted - started, "to_motor": motor - posted,
                             "motor_to_done": seen - motor}  # fmt: skip
                    return seen - started, parts
                if status in TERMINAL_ORDER_STATUSES:
                    raise RuntimeError(f"vend of {order_id} ended {status}, not completed")
        raise RuntimeError(f"stream of {order_id} ended before completion")


async def vends(http: aiohttp.ClientSession, machines: list[Machine], each: int) -> Row:
    async def run(machine: Machine) -> list[tuple[float, dict[str, float]]]:
        await machine.vend(http)  # warm-up
        return [await machine.vend(http) for _ in range(each)]

    started = time.perf_counter()
    results = await asyncio.gather(*(run(m) for m in machines))
    wall = time.perf_counter() - started
    flat = [r for rs in results for r in rs]
    parts: dict[str, list[float]] = {}
    for _, p in flat:
        for key, value in p.items():
            parts.setdefault(key, []).append(value)
    return Row(f"vends: {len(machines)} machine(s)", [t for t, _ in flat], wall, parts)


# --- the run -------------------------------------------------------------------------------------


async def _start_gateway(
    root: Path, spec: dict[str, Any], profile: Path | None
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    spec_path = root / "gateway.json"
    spec_path.write_text(json.dumps(spec))
    command = [sys.executable, "-m", "tools.bench.vend_latency", "--gateway", str(spec_path)]
    if profile is not None:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        fmt = ["--format", "raw"] if profile.suffix == ".txt" else []
        command = [py_spy, "record", "--rate", "250", *fmt, "-o", str(profile), "--", *command]
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, read from a thread
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=Path.cwd()
    )
    assert proc.stdout is not None
    while True:  # py-spy prints its own lines first
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        if not line:
            raise RuntimeError("the gateway process ended before it was ready")
        if line.startswith(b"{"):
            return proc, json.loads(line)


async def run(
    levels: list[int], samples: int, root: Path, profile: Path | None, trace: bool
) -> list[str]:
    count = max(levels)
    ids = [f"BENCH{i}" for i in range(count)]
    secrets = {mid: new_mqtt_secret() for mid in ids}
    keys = {mid: new_command_key() for mid in ids}
    # Units (and credit) for every vend a machine may make: each level's share plus a warm-up.
    stock = sum(max(2, math.ceil(samples / n)) + 1 for n in levels) + 2
    spec = {
        "data_dir": str(root / "gateway"),
        "gateway_password": new_mqtt_secret(),
        "trace": trace,
        "machines": [
            {
                "id": m,
                "secret_hash": hash_secret(secrets[m], iterations=1000),
                "key": keys[m],
                "stock": stock,
            }
            for m in ids
        ],
    }
    proc, ready = await _start_gateway(root, spec, profile)
    lines: list[str] = []
    machines: list[Machine] = []
    try:
        for mid in ids:
            flash = root / f"flash-{mid}"
            VirtualDevice.install(
                flash,
                {
                    "machine_id": mid, "mqtt_host": "127.0.0.1", "mqtt_port": ready["mqtt_port"],
                    "mqtt_password": secrets[mid], "command_key": keys[mid],
                    "sim_slots": {"A1": stock}, "motor_ms": MOTOR_MS,
                    "drop_timeout_ms": DROP_TIMEOUT_MS,
                },
            )  # fmt: skip
            machines.append(Machine(mid, VirtualDevice(flash)))
        await asyncio.gather(*(m.device.start(timeout=60) for m in machines))
        await asyncio.gather(*(m.device.wait_online(timeout=60) for m in machines))
        user = GatewaySettings.model_fields["gateway_client_id"].default
        uri = f"mqtt://{user}:{spec['gateway_password']}@127.0.0.1:{ready['mqtt_port']}"
        async with aiohttp.ClientSession(base_url=ready["http_url"]) as http:
            await asyncio.gather(*(m.credit(http, PRICE * stock) for m in machines))
            for n in levels:
                each = max(2, math.ceil(samples / n))
                floor_row = await floor(uri, n, each)
                vend_row = await vends(http, machines[:n], each)
                load = os.getloadavg()
                out = [
                    f"concurrency {n}:",
                    floor_row.line(),
                    vend_row.line(),
                    "    breakdown p50: "
                    + ", ".join(
                        f"{k} {statistics.median(v) * 1000:.2f} ms"
                        for k, v in vend_row.parts.items()
                    ),
                    f"ratio concurrency={n}: p50 x{vend_row.p50 / floor_row.p50:.1f}, "
                    f"p99 x{vend_row.p99 / floor_row.p99:.1f}  (goal x5; motor {MOTOR_MS} ms; "
                    f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})",
                ]
                for text in out:
                    print(text, flush=True)
                lines += out
    finally:
        await asyncio.gather(*(m.device.close() for m in machines), return_exceptions=True)
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.to_thread(proc.wait, 60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vend_latency", description=__doc__.splitlines()[0])
    parser.add_argument("--machines", default="1,4,20", help="concurrency levels, e.g. 1,4,20")
    parser.add_argument("--samples", type=int, default=100, help="vends per level (about)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1,2 machines, 6 vends")
    parser.add_argument("--profile", type=Path, help="run the gateway under py-spy into FILE")
    parser.add_argument("--trace", action="store_true", help="gateway store call timings")
    parser.add_argument("--firmware", type=Path, help="firmware tree to flash (default: ours)")
    parser.add_argument("--gateway", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.getLogger("amqtt").setLevel(logging.ERROR)  # its disconnect notes are not figures
    if args.gateway is not None:
        logging.basicConfig(level=logging.WARNING)
        logging.getLogger("amqtt").setLevel(logging.ERROR)
        asyncio.run(_serve_gateway(json.loads(args.gateway.read_text())))
        return 0
    try:
        levels = [int(x) for x in args.machines.split(",")]
    except ValueError:
        parser.error("--machines takes a comma-separated list of numbers")
    if args.firmware is not None:  # e.g. an older commit's firmware_mpy/, for a before/after
        flash_module.FIRMWARE_DIR = args.firmware.resolve()
    samples = args.samples
    if args.quick:
        levels, samples = [1, 2], 6
    if samples < 1 or not levels or min(levels) < 1:
        parser.error("--samples and every --machines level must be at least 1")
    print(f"vend_latency: machines {levels}, ~{samples} vends per level, motor {MOTOR_MS} ms, "
          f"{os.cpu_count()} cpus", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="vend-bench-") as tmp:
        asyncio.run(run(levels, samples, Path(tmp), args.profile, args.trace))
    return 0


if __name__ == "__main__":
    sys.exit(main())
