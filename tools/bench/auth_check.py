"""What the per-request revocation check costs, and what a password-guessing burst does to other
users' reads.

``python -m tools.bench.auth_check [--requests 400] [--guesses 40] [--database-url URL]``

A real cloud (SQLite by default) on loopback, production argon2 cost. Part 1 times one user's
authenticated ``GET /api/v1/machines``, one request after another, with the check (token, then
one session+user row from the database) against the same request with a JWT-only check swapped
in for the baseline; batches alternate so both see the same machine load. Part 2 times the same
read while another client sends wrong passwords concurrently (throttling off, so every guess
reaches argon2): argon2 runs in its own bounded pool, so reads should stay near the idle figure.
"""

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import jwt
from aiohttp import web

from cloud.auth.permissions import Role, permissions_for
from cloud.auth.tokens import Principal
from cloud.context import CloudContext
from cloud.http import registry
from cloud.server import CloudServer
from cloud.settings import CloudSettings

PASSWORD = "correct horse battery staple"


async def _jwt_only(request: web.Request, ctx: CloudContext) -> Principal:
    """The pre-revocation behaviour: signature and expiry only, role from the token."""
    token = request.headers["Authorization"].partition(" ")[2]
    claims = ctx.access_tokens.verify(token)
    role = Role(jwt.decode(token, options={"verify_signature": False})["role"])
    return Principal(
        claims.user_id, claims.tenant_id, role, frozenset(permissions_for(role)), claims.session_id
    )


async def _timed_reads(http: aiohttp.ClientSession, url: str, token: str, n: int) -> list[float]:
    times = []
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(n):
        started = time.perf_counter()
        async with http.get(url, headers=headers) as resp:
            await resp.read()
            assert resp.status == 200, resp.status
        times.append(time.perf_counter() - started)
    return times


def _row(name: str, times: list[float]) -> tuple[float, float]:
    ms = sorted(t * 1000 for t in times)
    p50 = statistics.median(ms)
    p95 = ms[max(0, int(len(ms) * 0.95) - 1)]
    print(f"| {name} | {len(ms)} | {p50:.2f} ms | {p95:.2f} ms | {ms[-1]:.2f} ms |")
    return p50, p95


async def _guess(http: aiohttp.ClientSession, url: str, email: str) -> int:
    body = {"email": email, "password": f"wrong-{uuid.uuid4().hex[:8]}"}
    async with http.post(url, json=body) as resp:
        await resp.read()
        return resp.status


async def run(
    requests: int, guesses: int, database_url: str | None, concurrency: int, throttled: bool
) -> None:
    unthrottled = {
        "login_pair_free_failures": 10_000,
        "login_address_free_failures": 10_000,
        "login_account_free_failures": 10_000,
    }
    with tempfile.TemporaryDirectory() as tmp:
        settings = CloudSettings(
            database_url=database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'cloud.db'}",
            data_dir=Path(tmp) / "data",
            http_port=0,
            sync_port=0,
            password_hash_concurrency=concurrency,
            password_hash_wait_s=60,
        )
        if not throttled:
            # Part 2 measures argon2 under a burst: nothing may stop the guesses early.
            settings = settings.model_copy(update=unthrottled)
        async with CloudServer(settings) as cloud, aiohttp.ClientSession() as http:
            email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
            await cloud.create_tenant(f"bench-{uuid.uuid4().hex[:8]}", email, PASSWORD)
            async with http.post(
                cloud.api_url + "/api/v1/auth/login", json={"email": email, "password": PASSWORD}
            ) as resp:
                token = (await resp.json())["data"]["access_token"]
            url = cloud.api_url + "/api/v1/machines"
            checked: list[float] = []
            baseline: list[float] = []
            real = registry.authenticate
            await _timed_reads(http, url, token, 50)  # warm up
            batch = 50
            for _ in range(max(1, requests // batch)):
                registry.authenticate = _jwt_only
                baseline += await _timed_reads(http, url, token, batch)
                registry.authenticate = real
                checked += await _timed_reads(http, url, token, batch)
            registry.authenticate = real

            print("\n| authenticated GET /api/v1/machines | n | p50 | p95 | max |")
            print("|---|---|---|---|---|")
            b50, b95 = _row("JWT only (baseline, the old check)", baseline)
            c50, c95 = _row("JWT + session/user row (revocation check)", checked)
            print(
                f"\nratio check/baseline: p50 x{c50 / b50:.2f}, p95 x{c95 / b95:.2f}; "
                f"the check adds {c50 - b50:.2f} ms at p50"
            )

            idle = await _timed_reads(http, url, token, 100)
            login_url = cloud.api_url + "/api/v1/auth/login"
            started = time.perf_counter()
            burst = asyncio.gather(*(_guess(http, login_url, email) for _ in range(guesses)))
            during: list[float] = []
            while not burst.done():
                during += await _timed_reads(http, url, token, 5)
            statuses = await burst
            elapsed = time.perf_counter() - started
            print(f"\n| reads, argon2 pool of {concurrency} | n | p50 | p95 | max |")
            print("|---|---|---|---|---|")
            i50, _ = _row("idle", idle)
            d50, _ = _row(f"during {guesses} concurrent wrong passwords", during)
            print(
                f"\nburst: {guesses} guesses in {elapsed:.1f} s "
                f"({guesses / elapsed:.1f}/s, statuses "
                f"{ {code: statuses.count(code) for code in sorted(set(statuses))} }); "
                f"reads p50 x{d50 / i50:.2f} against idle"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.auth_check")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--guesses", type=int, default=40)
    parser.add_argument("--database-url", help="e.g. postgresql+asyncpg://postgres@127.0.0.1/db")
    parser.add_argument(
        "--hash-concurrency",
        type=int,
        default=CloudSettings().password_hash_concurrency,
        help="argon2 pool size (6 = what asyncio's default executor gave it on 2 cores)",
    )
    parser.add_argument(
        "--throttled", action="store_true", help="part 2 with the default login throttling on"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(
        run(args.requests, args.guesses, args.database_url, args.hash_concurrency, args.throttled)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
