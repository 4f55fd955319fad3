"""Sync drain: how fast the cloud stores a gateway's outbox backlog, against a bare sink.

``python -m tools.bench.sync_drain [--events 10000] [--batch 500] [--machines 4]
[--database-url postgresql+asyncpg://postgres@127.0.0.1:5432/postgres] [--per-event] [--quick]``

A real cloud on loopback (SQLite by default; with ``--database-url`` pointing at a PostgreSQL
server a scratch database is created on it and dropped afterwards) with one tenant, one site,
``--machines`` onboarded machines and an enrolled gateway (mTLS client certificate). The gateway
pushes ``--events`` events one batch after another, as ``edge.sync.client`` does: a realistic mix
per cash sale (order snapshot paid, cash credit, credit ledger entry, dispense result, stock
count, order snapshot completed) over the machines. Every batch must be acked in full.

The floor, in the same run: the same batches (same JSON bodies) POSTed over one keep-alive
connection to a bare aiohttp app that parses them and inserts them into one table of the same
database kind (``sqlite3`` WAL with ``synchronous=NORMAL`` as the cloud runs it, or asyncpg
into the scratch database) with one ``executemany`` in one transaction per batch, deduplicating
by event id. Plain HTTP: the floor pays no TLS. Prints events/s for both and the ratio
(cloud / floor).
"""

import argparse
import asyncio
import json
import logging
import os
import sqlite3
import ssl
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cloud.auth.passwords import Passwords
from cloud.bootstrap import create_tenant_with_admin
from cloud.server import CloudServer
from cloud.settings import CloudSettings
from cloud.sync import events as events_module

PASSWORD = "correct horse battery staple"
MASTER_KEYS = "bench:" + "cd" * 32


# --- the workload ----------------------------------------------------------------------------


def _ts() -> str:
    return datetime.now(UTC).isoformat()


def _snapshot(
    order_id: str, mid: str, item: dict[str, Any], version: int, status: str, dispensed: int
) -> dict[str, Any]:
    price = item["price"]
    return {
        "id": order_id,
        "machine_id": mid,
        "status": status,
        "payment_method": "cash",
        "total_amount": price,
        "paid_amount": price,
        "currency": "INR",
        "items": [
            {
                "id": f"{order_id}-1",
                "catalog_item_id": item["id"],
                "slot": item["slot"],
                "name": item["name"],
                "unit_price": price,
                "quantity": 1,
                "dispensed": dispensed,
                "dispense_status": "dispensed" if dispensed else "pending",
            }
        ],
        "created_at": _ts(),
        "updated_at": _ts(),
        "version": version,
    }


def make_events(n: int, machines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``n`` outbox events, six per cash sale, round robin over the machines."""
    events: list[dict[str, Any]] = []
    seq = 0
    stock: dict[str, int] = {}

    def add(type_: str, payload: dict[str, Any]) -> None:
        nonlocal seq
        seq += 1
        events.append(
            {
                "seq": seq,
                "event_id": uuid.uuid4().hex,
                "type": type_,
                "occurred_at": _ts(),
                "payload": payload,
            }
        )

    sale = 0
    while len(events) < n:
        machine = machines[sale % len(machines)]
        item = machine["catalog"][sale % len(machine["catalog"])]
        sale += 1
        mid = machine["id"]
        order_id = str(uuid.uuid4())
        credit_id = uuid.uuid4().hex
        price = item["price"]

        stock[item["id"]] = max(0, stock.get(item["id"], 1000) - 1)
        add("order.snapshot", _snapshot(order_id, mid, item, 1, "paid", 0))
        add(
            "cash.credit",
            {
                "credit_id": credit_id,
                "machine_id": mid,
                "amount": price,
                "currency": "INR",
                "order_id": order_id,
            },
        )
        add(
            "credit.entry",
            {
                "entry_id": uuid.uuid4().hex,
                "machine_id": mid,
                "currency": "INR",
                "delta": price,
                "balance": price,
                "reason": "cash_in",
                "credit_id": credit_id,
            },
        )
        add(
            "dispense.result",
            {
                "cmd_id": f"cmd-{uuid.uuid4().hex}",
                "machine_id": mid,
                "order_id": order_id,
                "item_id": f"{order_id}-1",
                "slot": item["slot"],
                "result": "ok",
                "device_ts": 1_700_000_000 + seq,
            },
        )
        add(
            "inventory.changed",
            {
                "machine_id": mid,
                "catalog_item_id": item["id"],
                "slot": item["slot"],
                "quantity": stock[item["id"]],
                "delta": -1,
                "reason": "sale",
            },
        )
        add("order.snapshot", _snapshot(order_id, mid, item, 2, "completed", 1))
    return events[:n]


def batches(events: list[dict[str, Any]], size: int) -> list[bytes]:
    return [
        json.dumps({"events": events[i : i + size]}).encode() for i in range(0, len(events), size)
    ]


# --- the cloud ---------------------------------------------------------------------------------


def _key_and_csr() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench-gateway")]))
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


def _client_ssl(data: dict[str, Any], key: ec.EllipticCurvePrivateKey, tmp: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=data["ca_pem"])
    cert_path, key_path = tmp / "gw.crt", tmp / "gw.key"
    cert_path.write_text(data["certificate_pem"])
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    context.load_cert_chain(cert_path, key_path)
    return context


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, body: Any = None, token: str = ""
) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(method, url, json=body, headers=headers) as resp:
        data = await resp.json()
        assert resp.status in (200, 201), (resp.status, data)
        return data.get("data", data)


async def setup_cloud(
    cloud: CloudServer, n_machines: int, tmp: Path
) -> tuple[str, ssl.SSLContext, list[dict[str, Any]]]:
    """Tenant, site, machines and an enrolled gateway: (sync url, its TLS context, machines)."""
    email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
    await create_tenant_with_admin(
        cloud.engine,
        "bench",
        email,
        PASSWORD,
        passwords=Passwords(time_cost=1, memory_cost=8, parallelism=1),
    )
    api = cloud.api_url
    async with aiohttp.ClientSession() as http:
        tokens = await _call(
            http, "POST", f"{api}/api/v1/auth/login", {"email": email, "password": PASSWORD}
        )
        token = tokens["access_token"]
        site = await _call(http, "POST", f"{api}/api/v1/sites", {"name": "Bench"}, token)
        machines = []
        for i in range(n_machines):
            catalog = [
                {
                    "slot": f"A{j + 1}",
                    "name": f"Item {j}",
                    "price": 1000 + 500 * j,
                    "quantity": 1000,
                }
                for j in range(6)
            ]
            onboarded = await _call(
                http,
                "POST",
                f"{api}/api/v1/machines/onboard",
                {"name": f"M{i}", "site_id": site["id"], "catalog": catalog},
                token,
            )
            machines.append(onboarded["machine"])
        enrol_token = await _call(
            http, "POST", f"{api}/api/v1/sites/{site['id']}/enrollment-tokens", None, token
        )
        key, csr = _key_and_csr()
        enrolled = await _call(
            http,
            "POST",
            f"{api}/api/v1/gateways/enroll",
            {"token": enrol_token["token"], "csr_pem": csr, "name": "bench"},
        )
    return enrolled["sync_url"], _client_ssl(enrolled, key, tmp), machines


async def drive(
    url: str, bodies: list[bytes], n_events: int, ssl_context: ssl.SSLContext | None
) -> float:
    """POST the batches one after another over one connection; seconds taken."""
    connector = aiohttp.TCPConnector(ssl=ssl_context if ssl_context else False, limit=1)
    accepted = 0
    async with aiohttp.ClientSession(connector=connector) as http:
        headers = {"Content-Type": "application/json"}
        started = time.perf_counter()
        for body in bodies:
            async with http.post(url, data=body, headers=headers) as resp:
                answer = await resp.json()
                assert resp.status == 200, (resp.status, answer)
            ack = answer.get("data", answer)
            assert not ack.get("rejected"), ack["rejected"][:3]
            accepted += ack["accepted"]
        elapsed = time.perf_counter() - started
    assert accepted == n_events, (accepted, n_events)
    return elapsed


# --- the floor ---------------------------------------------------------------------------------


class SqliteSink:
    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # as the cloud's engine sets it
        self.db.execute(
            "CREATE TABLE events (event_id TEXT PRIMARY KEY, gateway_id TEXT NOT NULL,"
            " seq INTEGER NOT NULL, type TEXT NOT NULL, occurred_at TEXT NOT NULL,"
            " payload TEXT NOT NULL, received_at TEXT NOT NULL)"
        )

    async def store(self, rows: list[tuple[Any, ...]]) -> int:
        before = self.db.total_changes
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        self.db.execute("COMMIT")
        return self.db.total_changes - before

    async def close(self) -> None:
        self.db.close()


class PostgresSink:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, dsn: str) -> "PostgresSink":
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        await pool.execute(
            "CREATE TABLE floor_events (event_id TEXT PRIMARY KEY, gateway_id TEXT NOT NULL,"
            " seq BIGINT NOT NULL, type TEXT NOT NULL, occurred_at TEXT NOT NULL,"
            " payload JSON NOT NULL, received_at TEXT NOT NULL)"
        )
        return cls(pool)

    async def store(self, rows: list[tuple[Any, ...]]) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                "INSERT INTO floor_events VALUES ($1, $2, $3, $4, $5, $6, $7)"
                " ON CONFLICT (event_id) DO NOTHING",
                rows,
            )
        return len(rows)

    async def close(self) -> None:
        await self.pool.close()


def floor_app(sink: Any) -> web.Application:
    async def push(request: web.Request) -> web.Response:
        body = await request.json()
        now = _ts()
        rows = [
            (
                e["event_id"],
                "gw",
                e["seq"],
                e["type"],
                e["occurred_at"],
                json.dumps(e["payload"]),
                now,
            )
            for e in body["events"]
        ]
        accepted = await sink.store(rows)
        high = max(e["seq"] for e in body["events"])
        return web.json_response(
            {
                "ack_seq": high,
                "accepted": accepted,
                "duplicates": len(rows) - accepted,
                "rejected": [],
            }
        )

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/sync/v1/events", push)
    return app


async def run_floor(sink: Any, bodies: list[bytes], n_events: int) -> float:
    runner = web.AppRunner(floor_app(sink), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        return await drive(f"http://127.0.0.1:{port}/sync/v1/events", bodies, n_events, None)
    finally:
        await runner.cleanup()
        await sink.close()


# --- the run -----------------------------------------------------------------------------------


@contextmanager
def scratch_postgres(admin_url: str) -> Iterator[tuple[str, str]]:
    """A new database on the server of ``admin_url``: (SQLAlchemy URL, asyncpg DSN)."""
    base = admin_url.replace("postgresql+asyncpg://", "postgresql://")
    server, _, _ = base.rpartition("/")
    name = f"bench_sync_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(f"{server}/postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://{server.partition('://')[2]}/{name}", f"{server}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def bench(args: argparse.Namespace, database_url: str, pg_dsn: str | None) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp_name:
        tmp = Path(tmp_name)
        url = database_url or f"sqlite+aiosqlite:///{tmp / 'cloud.db'}"
        settings = CloudSettings(
            database_url=url,
            data_dir=tmp / "cloud-data",
            http_port=0,
            sync_port=0,
            jwt_secret="bench-secret-" + "x" * 40,
            password_hash_time_cost=1,
            password_hash_memory_cost=8,
            password_hash_parallelism=1,
            master_keys=MASTER_KEYS,
        )
        async with CloudServer(settings) as cloud:
            sync_url, context, machines = await setup_cloud(cloud, args.machines, tmp)
            events = make_events(args.events, machines)
            bodies = batches(events, args.batch)
            cloud_s = await drive(f"{sync_url}/sync/v1/events", bodies, len(events), context)
        sink: Any = await PostgresSink.open(pg_dsn) if pg_dsn else SqliteSink(tmp / "floor.db")
        floor_s = await run_floor(sink, bodies, len(events))
    kind = "postgresql" if pg_dsn else "sqlite"
    n = len(events)
    cloud_rate, floor_rate = n / cloud_s, n / floor_s
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    path = "per-event apply" if args.per_event else "bulk apply"
    print(
        f"sync drain ({kind}, {path}): {n} events in batches of {args.batch}, "
        f"{args.machines} machines"
    )
    print(f"  load average: {load}")
    print(f"  cloud: {cloud_s:8.3f} s  {cloud_rate:10.0f} events/s")
    print(f"  floor: {floor_s:8.3f} s  {floor_rate:10.0f} events/s  (bare aiohttp + {kind})")
    print(f"ratio: {cloud_rate / floor_rate:.3f} (cloud / floor)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--machines", type=int, default=4)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 600 events")
    parser.add_argument(
        "--per-event",
        action="store_true",
        help="the cloud applies every batch event by event (the path before the bulk apply)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.events = min(args.events, 600)
        args.batch = min(args.batch, 200)
    logging.basicConfig(level=logging.WARNING)
    if args.per_event:
        events_module._bulkable = lambda items: False  # type: ignore[assignment]
    if args.database_url.startswith("postgresql"):
        with scratch_postgres(args.database_url) as (url, dsn):
            asyncio.run(bench(args, url, dsn))
    else:
        asyncio.run(bench(args, args.database_url, None))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
