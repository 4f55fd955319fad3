"""Cloud authenticated reads against their floor: ``GET /api/v1/machines`` with the per-request
revocation check, next to a bare aiohttp app returning the same bytes, in the same run.

``python -m tools.bench.cloud_reads [--connections 50] [--duration 8] [--machines 20]
[--postgres | --database-url URL] [--no-writer] [--py-spy OUT.svg] [--quick]``

A real cloud (SQLite in a temporary directory by default; ``--postgres`` makes a scratch database
on 127.0.0.1:5432 and drops it afterwards) runs in this process: one tenant, one site,
``--machines`` machines, a logged-in admin. The load comes from a separate process (so the
generator's CPU is not the server's event loop): C keep-alive connections, each sending the same
request one after another for a fixed time, a minimal HTTP/1.1 client on raw asyncio streams so
the generator costs as little as possible. Three phases, each with the same generator:

1. floor: a bare aiohttp app (no middleware) answering every GET with the bytes the cloud
   returned for the same request;
2. cloud: the authenticated read (token verified, session+user row read, machines read);
3. cloud while a writer (``PUT /machines/{id}/config`` back to back, each a write transaction
   holding SQLite's write lock) runs alongside: reads must not queue behind it.

Prints req/s, p50, p99 and the ratio cloud/floor for each phase. Loops are bounded by time and
count; traffic is on loopback only.
"""

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from cloud.server import CloudServer
from cloud.settings import CloudSettings

PASSWORD = "correct horse battery staple"
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
MAX_REQUESTS_PER_CONNECTION = 1_000_000


# --- the load generator (runs in its own process) ------------------------------------------


async def _one_connection(
    host: str,
    port: int,
    request: bytes,
    deadline: float,
    warmup_until: float,
    out: list[float],
    served: list[int],
) -> tuple[int, int]:
    """Requests one after another on one keep-alive connection until ``deadline``; latencies of
    those started after ``warmup_until`` go to ``out``. Returns (ok, failed)."""
    reader, writer = await asyncio.open_connection(host, port)
    good = bad = 0
    try:
        for _ in range(MAX_REQUESTS_PER_CONNECTION):
            started = time.perf_counter()
            if started >= deadline:
                break
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            served[0] += 1
            if started >= warmup_until:
                out.append(time.perf_counter() - started)
                if head.startswith(b"HTTP/1.1 200"):
                    good += 1
                else:
                    bad += 1
    finally:
        writer.close()
    return good, bad


async def _write_loop(
    host: str, port: int, request: bytes, deadline: float, out: list[float]
) -> int:
    """A writer: the same write request back to back on one connection."""
    reader, writer = await asyncio.open_connection(host, port)
    bad = 0
    try:
        for _ in range(MAX_REQUESTS_PER_CONNECTION):
            started = time.perf_counter()
            if started >= deadline:
                break
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            out.append(time.perf_counter() - started)
            if not head.startswith(b"HTTP/1.1 200"):
                bad += 1
    finally:
        writer.close()
    return bad


async def _generate(spec: dict[str, Any]) -> dict[str, Any]:
    request = spec["request"].encode("latin-1")
    now = time.perf_counter()
    warmup_until = now + spec["warmup"]
    deadline = warmup_until + spec["duration"]
    latencies: list[float] = []
    writes: list[float] = []
    served = [0]
    tasks = [
        _one_connection(
            spec["host"], spec["port"], request, deadline, warmup_until, latencies, served
        )
        for _ in range(spec["connections"])
    ]
    writer_task = None
    if spec.get("write_request"):
        write = spec["write_request"].encode("latin-1")
        writer_task = asyncio.ensure_future(
            _write_loop(spec["host"], spec["port"], write, deadline, writes)
        )
    results = await asyncio.gather(*tasks)
    write_failures = await writer_task if writer_task is not None else 0
    ms = sorted(x * 1000 for x in latencies)
    wms = sorted(x * 1000 for x in writes)
    return {
        "ok": sum(r[0] for r in results),
        "failed": sum(r[1] for r in results),
        "seconds": spec["duration"],
        "served": served[0] + len(wms),
        "p50": statistics.median(ms) if ms else 0.0,
        "p99": ms[min(len(ms) - 1, int(len(ms) * 0.99))] if ms else 0.0,
        "writes": len(wms),
        "write_failures": write_failures,
        "write_p50": statistics.median(wms) if wms else 0.0,
    }


def _generator_main() -> int:
    spec = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(_generate(spec))))
    return 0


def _request(method: str, path: str, token: str, body: bytes = b"") -> str:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {token}"]
    if method != "GET":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return "\r\n".join(lines) + "\r\n\r\n" + body.decode("latin-1")


def _cpu_s() -> float:
    """CPU seconds this process (the servers, all threads) has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _load(spec: dict[str, Any]) -> dict[str, Any]:
    cpu_before = _cpu_s()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.bench.cloud_reads",
        "--generator",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(
        proc.communicate(json.dumps(spec).encode()), timeout=spec["warmup"] + spec["duration"] + 60
    )
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode})")
    result = dict(json.loads(out))
    # Warm-up included: CPU per request over every request the phase served.
    result["cpu_s"] = _cpu_s() - cpu_before
    return result


# --- the servers ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _floor_app(body: bytes, content_type: str) -> AsyncIterator[int]:
    async def answer(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type)

    app = web.Application()
    app.router.add_get("/api/v1/machines", answer)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
    try:
        yield port
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def _database(args: argparse.Namespace, tmp: Path) -> AsyncIterator[str]:
    if args.database_url:
        yield args.database_url
        return
    if not args.postgres:
        yield f"sqlite+aiosqlite:///{tmp / 'cloud.db'}"
        return
    import asyncpg

    name = f"bench_reads_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def _seed(cloud: CloudServer, machines: int) -> tuple[str, str]:
    """Tenant, site and machines; returns (admin access token, one machine id)."""
    email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
    await cloud.create_tenant(f"bench-{uuid.uuid4().hex[:8]}", email, PASSWORD)
    base = cloud.api_url + "/api/v1"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            base + "/auth/login", json={"email": email, "password": PASSWORD}
        ) as resp:
            token = (await resp.json())["data"]["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        async with http.post(base + "/sites", json={"name": "bench"}, headers=headers) as resp:
            site_id = (await resp.json())["data"]["id"]
        machine_id = ""
        for i in range(machines):
            body = {"name": f"machine-{i:03d}", "site_id": site_id, "location": f"floor {i}"}
            async with http.post(base + "/machines/onboard", json=body, headers=headers) as resp:
                assert resp.status == 201, await resp.text()
                machine_id = machine_id or (await resp.json())["data"]["machine"]["id"]
    return token, machine_id


def _line(name: str, r: dict[str, Any]) -> float:
    rate = r["ok"] / r["seconds"]
    per_request = 1000 * r["cpu_s"] / max(1, r["served"])
    print(
        f"| {name} | {r['ok'] + r['failed']} | {r['failed']} | {rate:,.0f} | "
        f"{r['p50']:.1f} ms | {r['p99']:.1f} ms | {per_request:.3f} ms |"
    )
    return float(rate)


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        async with _database(args, tmp) as database_url:
            settings = CloudSettings(
                database_url=database_url,
                data_dir=tmp / "data",
                http_port=0,
                sync_port=0,
                jwt_secret="bench-secret-" + "x" * 40,
                password_hash_time_cost=1,
                password_hash_memory_cost=8,
                password_hash_parallelism=1,
            )
            async with CloudServer(settings) as cloud:
                token, machine_id = await _seed(cloud, args.machines)
                port = int(cloud.api_url.rsplit(":", 1)[1])
                async with aiohttp.ClientSession() as http:
                    async with http.get(
                        cloud.api_url + "/api/v1/machines",
                        headers={"Authorization": f"Bearer {token}"},
                    ) as resp:
                        assert resp.status == 200, await resp.text()
                        body = await resp.read()
                        content_type = resp.content_type
                spec = {
                    "host": "127.0.0.1",
                    "connections": args.connections,
                    "duration": args.duration,
                    "warmup": args.warmup,
                    "request": _request("GET", "/api/v1/machines", token),
                }
                async with _floor_app(body, content_type) as floor_port:
                    floor = await _load(spec | {"port": floor_port})
                profiler = None
                if args.py_spy:
                    profiler = subprocess.Popen(  # noqa: ASYNC220 - a child left running
                        [
                            str(Path(sys.executable).parent / "py-spy"),
                            "record",
                            "--pid",
                            str(os.getpid()),
                            "--duration",
                            str(int(args.duration + args.warmup)),
                            "--output",
                            args.py_spy,
                            "--nonblocking",
                            "--rate",
                            "400",
                            *([] if args.py_spy.endswith(".svg") else ["--format", "raw"]),
                        ],
                        stdout=subprocess.DEVNULL,
                    )
                served = await _load(spec | {"port": port})
                if profiler is not None:
                    await asyncio.to_thread(profiler.wait, 60)
                written = None
                if args.writer:
                    write_body = json.dumps({"config": {"vend_timeout_s": 30}}).encode()
                    write = _request(
                        "PUT", f"/api/v1/machines/{machine_id}/config", token, write_body
                    )
                    written = await _load(spec | {"port": port, "write_request": write})

    backend = "PostgreSQL" if "postgresql" in database_url else "SQLite"
    print(
        f"\ncloud reads, {backend}, {args.connections} connections, {args.machines} machines, "
        f"{args.duration:g} s per phase after {args.warmup:g} s warm-up, "
        f"response {len(body)} bytes, load {os.getloadavg()[0]:.2f}"
    )
    print("\n| phase | requests | failed | req/s | p50 | p99 | server CPU per request |")
    print("|---|---|---|---|---|---|---|")
    floor_rate = _line("floor: bare aiohttp, same bytes", floor)
    rate = _line("cloud GET /api/v1/machines (revocation check on)", served)
    if written is not None:
        writer_rate = _line("cloud, same, with a writer alongside", written)
        print(
            f"\nwriter: {written['writes']} config writes ({written['write_failures']} failed), "
            f"p50 {written['write_p50']:.1f} ms"
        )
    print(f"\nratio cloud/floor: {rate / floor_rate:.3f} (p99 {served['p99']:.1f} ms)")
    if written is not None:
        print(
            f"ratio with writer/floor: {writer_rate / floor_rate:.3f} (p99 {written['p99']:.1f} ms)"
        )
    failed = floor["failed"] + served["failed"] + (written["failed"] if written else 0)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.cloud_reads")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per phase")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--machines", type=int, default=20)
    parser.add_argument("--postgres", action="store_true", help="a scratch database on :5432")
    parser.add_argument("--database-url", help="e.g. postgresql+asyncpg://postgres@127.0.0.1/db")
    parser.add_argument("--no-writer", dest="writer", action="store_false")
    parser.add_argument("--py-spy", help="record a py-spy profile of the cloud phase to this file")
    parser.add_argument("--quick", action="store_true", help="a smoke run: seconds, small numbers")
    parser.add_argument("--generator", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.generator:
        return _generator_main()
    if args.quick:
        args.connections = min(args.connections, 4)
        args.duration = 0.5
        args.warmup = 0.2
        args.machines = min(args.machines, 3)
    logging.basicConfig(level=logging.WARNING)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
