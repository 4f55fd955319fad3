"""Durable order intake through the real kiosk API, against SQLite's single-transaction floor.

``python -m tools.bench.order_intake [--orders 6000] [--clients 20] [--seconds 40] [--quick]``

A standalone gateway (embedded amqtt, SQLite, no cloud) runs in its own process, so the clients'
CPU is not the gateway's. ``--clients`` kiosk clients, each with its own machine (a machine has at
most one open cash order), create cash orders through ``POST /api/v1/orders`` one after another;
each presents the token of its previous order, which the new one supersedes (the kiosk starting
over). An order is counted when its 201 arrived, i.e. after its transaction committed. One
process plays every kiosk from 127.0.0.1, so the per-client limits are raised in the settings.

Floor, same run: a plain ``sqlite3`` connection on a temp file, WAL, ``synchronous=FULL``, one
5-statement transaction per order (order row, 2 items, idempotency key, outbox), for the same
number of orders.
"""

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

PRICE = 1000


def _floor(path: Path, orders: int) -> float:
    """Orders/s of one 5-statement transaction per order, each committed with an fsync."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.executescript(
        "CREATE TABLE orders (id TEXT PRIMARY KEY, machine_id TEXT, status TEXT, total INTEGER,"
        " created_at TEXT, payload TEXT);"
        "CREATE TABLE order_items (id TEXT PRIMARY KEY, order_id TEXT, slot TEXT,"
        " quantity INTEGER, unit_price INTEGER);"
        "CREATE TABLE idempotency_keys (key TEXT PRIMARY KEY, request_hash TEXT,"
        " order_id TEXT, created_at TEXT);"
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY, event_id TEXT UNIQUE, type TEXT,"
        " payload TEXT, sent INTEGER DEFAULT 0);"
    )
    payload = json.dumps({"status": "awaiting_payment", "total": PRICE, "items": [1, 2]})
    started = time.perf_counter()
    for n in range(orders):
        order_id = str(uuid.uuid4())
        created = time.strftime("%Y-%m-%dT%H:%M:%S")
        conn.execute("BEGIN")
        conn.execute(
            "INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?)",
            [order_id, "M1", "awaiting_payment", PRICE, created, payload],
        )
        for slot in ("A1", "A2"):
            conn.execute(
                "INSERT INTO order_items VALUES (?, ?, ?, ?, ?)",
                [str(uuid.uuid4()), order_id, slot, 1, PRICE // 2],
            )
        conn.execute(
            "INSERT INTO idempotency_keys VALUES (?, ?, ?, ?)",
            [f"key-{n}-{order_id}", "h", order_id, created],
        )
        conn.execute(
            "INSERT INTO outbox (event_id, type, payload) VALUES (?, ?, ?)",
            [f"{order_id}-v1", "order.snapshot", payload],
        )
        conn.execute("COMMIT")
    rate = orders / (time.perf_counter() - started)
    conn.close()
    return rate


# --- the gateway, in a child process --------------------------------------------------------------


async def _serve(root: Path, clients: int, stock: int) -> None:
    from contracts.credentials import hash_secret, new_command_key, new_mqtt_secret
    from contracts.sync import CatalogItemState, MachineState, StateResponse
    from edge.app import Gateway
    from edge.settings import GatewaySettings

    settings = GatewaySettings(
        data_dir=root / "gateway", http_port=0, mqtt_port=0, zeroconf_enabled=False,
        # One process plays every kiosk from one address: the per-client limits would cap it.
        kiosk_max_open_orders_per_client=10 * clients,
        kiosk_orders_per_minute_per_client=100_000_000,
        kiosk_max_reserved_units_per_client=100 * clients,
    )  # fmt: skip
    machines = []
    for i in range(clients):
        machine_id = f"BENCH{i}"
        items = [
            CatalogItemState(
                id=f"{machine_id}-{slot}",
                slot=slot,
                name="Water",
                price=PRICE,
                currency="INR",
                quantity=stock,
            )
            for slot in ("A1", "A2")
        ]
        machines.append(
            MachineState(
                id=machine_id,
                tenant_id="bench",
                site_id="bench",
                name=machine_id,
                status="active",
                mqtt_secret_hash=hash_secret(new_mqtt_secret(), iterations=1000),
                command_key=new_command_key(),
                catalog=items,
                version=1,
            )
        )
    async with Gateway(settings) as gateway:
        await gateway.store.apply_state(StateResponse(cursor=1, machines=machines))
        print(f"URL {gateway.http_url} PID {os.getpid()}", flush=True)
        # Until the parent closes our stdin.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        # The writer's transactions, for the orders-per-commit figure (0 where not counted).
        print(f"COMMITS {getattr(gateway.store._writer, 'commits', 0)}", flush=True)


# --- the kiosk clients ----------------------------------------------------------------------------


async def _client(
    http: aiohttp.ClientSession,
    index: int,
    deadline: float,
    counter: list[int],
    total: int,
    tokens: list[str | None],
) -> int:
    machine_id = f"BENCH{index}"
    body = {
        "machine_id": machine_id,
        "items": [
            {"id": f"{machine_id}-A1", "quantity": 1},
            {"id": f"{machine_id}-A2", "quantity": 1},
        ],
        "payment_method": "cash",
    }
    done = 0
    while counter[0] < total and time.perf_counter() < deadline:
        counter[0] += 1
        headers = {"Idempotency-Key": f"bench-{uuid.uuid4().hex}"}
        token = tokens[index]
        if token is not None:
            headers["X-Order-Token"] = token
        async with http.post("/api/v1/orders", json=body, headers=headers) as response:
            answer = await response.json()
            if response.status != 201:
                raise RuntimeError(f"order refused: {response.status} {answer}")
        tokens[index] = answer["data"]["order_token"]
        done += 1
    return done


async def _drive(url: str, clients: int, orders: int, seconds: float) -> tuple[int, float]:
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(base_url=url, connector=connector) as http:
        # Warm-up: connections, caches, the first order per machine.
        tokens: list[str | None] = [None] * clients
        warm = time.perf_counter() + 30
        await asyncio.gather(*(_client(http, i, warm, [0], 1, tokens) for i in range(clients)))
        counter = [0]
        started = time.perf_counter()
        deadline = started + seconds
        done = await asyncio.gather(
            *(_client(http, i, deadline, counter, orders, tokens) for i in range(clients))
        )
        return sum(done), time.perf_counter() - started


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(orders: int, clients: int, seconds: float, root: Path) -> None:
    print(f"load average before: {_loadavg()}  ({os.cpu_count()} cores)")
    child = subprocess.Popen(
        [sys.executable, "-m", "tools.bench.order_intake", "--serve", str(root),
         "--clients", str(clients), "--stock", str(10 * orders + 1000)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line.startswith("URL "):
            raise RuntimeError(f"the gateway did not start: {line!r}")
        url, pid = line.split()[1], line.split()[3]
        print(f"gateway pid {pid} at {url}")
        cpu_before = _cpu_seconds(int(pid))
        done, wall = asyncio.run(_drive(url, clients, orders, seconds))
        # Includes the warm-up's 1 order a client; a figure that holds on a loaded machine.
        cpu = _cpu_seconds(int(pid)) - cpu_before
    finally:
        commits = None
        try:
            rest, _ = child.communicate(timeout=30)
            commits = next(
                (int(x.split()[1]) for x in rest.splitlines() if x.startswith("COMMITS ")), None
            )
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
    gateway_rate = done / wall
    print(
        f"gateway: {done} orders by {clients} kiosk clients in {wall:.2f} s: "
        f"{gateway_rate:,.0f} orders/s"
    )
    print(
        f"gateway CPU: {1000 * cpu / max(done, 1):.2f} ms an order "
        f"({100 * cpu / wall:.0f} % of a core)"
    )
    if commits:
        print(f"gateway writer: {commits} commits in the whole run (set-up and warm-up included)")
    floor_rate = _floor(root / "floor.db", done)
    print(
        f"floor:   {done} single-transaction orders (WAL, synchronous=FULL): "
        f"{floor_rate:,.0f} orders/s"
    )
    print(f"load average after: {_loadavg()}")
    ratio = gateway_rate / floor_rate
    print(f"ratio gateway / floor: {ratio:.2f} ({100 * ratio:.0f} %)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="order_intake", description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=6000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=40.0, help="stop early after this long")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 100 orders, 4 clients")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--stock", type=int, default=100_000, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        import logging

        logging.getLogger("amqtt").setLevel(logging.ERROR)
        asyncio.run(_serve(args.serve, args.clients, args.stock))
        return 0
    if args.quick:
        args.orders, args.clients, args.seconds = 100, 4, 20.0
    if args.orders < 1 or args.clients < 1:
        parser.error("--orders and --clients must be at least 1")
    with tempfile.TemporaryDirectory(prefix="order-bench-") as tmp:
        run(args.orders, args.clients, args.seconds, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
