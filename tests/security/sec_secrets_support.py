"""Support for the secrets tests: a cloud and an enrolled gateway on loopback (SQLite or a fresh
PostgreSQL database, with the raw bytes of each database at hand), and for the demo tests a
process-tree command-line sampler and a port squatter that answers like a cloud."""

import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from cloud_fixtures import cloud_test_settings, postgres_sqlalchemy_url, scratch_postgres
from gw_support import enrolled_gateway_settings
from polling import wait_for

from cloud.server import CloudServer
from cloud.settings import CloudSettings
from edge.app import Gateway
from provisioning.cloud_api import CloudApi

ADMIN_EMAIL = "admin@secrets.example"
ADMIN_PASSWORD = "secrets admin password"
PHONE = "+919876501234"
CATALOG = [{"slot": "A1", "name": "Water", "category": "drinks", "price": 2000, "quantity": 5}]


@dataclass
class Database:
    url: str
    sqlite_path: Path | None
    pg_dsn: str | None

    async def raw_text(self) -> str:
        """Everything the database holds, as an attacker with a copy of it would read it: the
        SQLite files' bytes, or every text column of every Postgres table."""
        if self.sqlite_path is not None:
            files = sorted(self.sqlite_path.parent.glob(self.sqlite_path.name + "*"))
            return b"".join(p.read_bytes() for p in files).decode("latin-1")
        assert self.pg_dsn is not None
        conn = await asyncpg.connect(self.pg_dsn)
        try:
            tables = [
                r["tablename"]
                for r in await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname='public'"
                )
            ]
            parts = []
            for table in tables:
                for row in await conn.fetch(f'SELECT t::text AS row FROM "{table}" t'):
                    parts.append(row["row"])
            return "\n".join(parts)
        finally:
            await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        path = tmp_path / "cloud.db"
        yield Database(f"sqlite+aiosqlite:///{path}", path, None)
        return
    with scratch_postgres("vending_sec") as name:
        yield Database(
            postgres_sqlalchemy_url(name), None, f"postgresql://postgres@127.0.0.1:5432/{name}"
        )


def cloud_settings(root: Path, database: Database, master_keys: str | None) -> CloudSettings:
    return cloud_test_settings(
        database.url,
        root / "cloud-data",
        jwt_secret="secrets-test-" + "x" * 40,
        master_keys=master_keys,
    )


@dataclass
class SecretsSite:
    cloud: CloudServer
    admin: CloudApi
    gateway: Gateway
    gateway_dir: Path
    machine_id: str
    credentials: dict[str, Any]
    catalog_item: str

    async def kiosk_order_with_phone(self) -> str:
        body = {
            "machine_id": self.machine_id,
            "items": [{"id": self.catalog_item, "quantity": 1}],
            "payment_method": "cash",
            "customer_name": "Asha",
            "customer_phone": PHONE,
        }
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{self.gateway.http_url}/api/v1/orders", json=body) as resp:
                payload = await resp.json()
                assert resp.status == 201, payload
                return str(payload["data"]["id"])

    async def synced(self, order_id: str) -> dict[str, Any]:
        async def arrived() -> bool:
            return any(o["id"] == order_id for o in await self.admin.orders(limit=100))

        await wait_for(arrived, within=30)
        return await self.admin.order(order_id)


@asynccontextmanager
async def secrets_site(
    root: Path, database: Database, master_keys: str | None = None
) -> AsyncIterator[SecretsSite]:
    """Cloud, tenant, site, one onboarded machine and an enrolled gateway that has pulled it."""
    async with CloudServer(cloud_settings(root, database, master_keys)) as cloud:
        await cloud.create_tenant("Secrets", ADMIN_EMAIL, ADMIN_PASSWORD)
        async with CloudApi(cloud.api_url) as admin:
            await admin.login(ADMIN_EMAIL, ADMIN_PASSWORD)
            site = await admin.create_site("Secrets site")
            result = await admin.onboard_machine(
                name="M1", site_id=site["id"], location=None, catalog=CATALOG
            )
            machine_id = result["machine"]["id"]
            token = await admin.enrollment_token(site["id"])
            gateway_dir = root / "gateway"
            settings = enrolled_gateway_settings(
                root, cloud.api_url, token, sync_pull_interval_s=0.5, sync_backoff_max_s=1.0
            )
            async with Gateway(settings) as gateway:

                async def pulled() -> bool:
                    rows = await gateway.store.query(
                        "SELECT id FROM machines WHERE id = ?", [machine_id]
                    )
                    return bool(rows)

                await wait_for(pulled, within=30)
                yield SecretsSite(
                    cloud,
                    admin,
                    gateway,
                    gateway_dir,
                    machine_id,
                    result["credentials"],
                    result["machine"]["catalog"][0]["id"],
                )


# --- the demo as a whole: its process tree and a port squatter --------------------------------


def descendants(root_pid: int) -> list[int]:
    """Every living process below ``root_pid`` (by parent pid, new sessions included)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    todo = [root_pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class CommandLineSampler(threading.Thread):
    """Records the command line of every process below ``root_pid`` until stopped, often
    enough to see the short-lived ones (``create-tenant``, ``vendctl login``)."""

    def __init__(self, root_pid: int, every_s: float = 0.01) -> None:
        super().__init__(name="cmdline-sampler", daemon=True)
        self.root_pid = root_pid
        self.every_s = every_s
        self.seen: set[str] = set()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.every_s):
            for pid in descendants(self.root_pid):
                try:
                    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if raw:
                    self.seen.add(raw.replace(b"\0", b" ").decode(errors="replace").strip())

    def stop(self) -> set[str]:
        self._stop_event.set()
        self.join(timeout=5)
        return self.seen


class FakeCloud(ThreadingHTTPServer):
    """Something else listening where the demo wanted its cloud: it answers every request
    with a 200 success envelope (as a cloud would) and counts them."""

    def __init__(self, port: int) -> None:
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                server.requests += 1
                body = json.dumps(
                    {"success": True, "data": {"access_token": "x", "refresh_token": "y"}}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
