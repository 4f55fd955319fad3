"""A real cloud (SQLite or PostgreSQL) and a real gateway enrolled with it over mTLS on loopback,
one machine onboarded, for the sync dead-letter attacks. Import the fixtures explicitly."""

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cloud_fixtures import cloud_test_settings, postgres_sqlalchemy_url, scratch_postgres
from gw_support import enrolled_gateway_settings
from polling import wait_for

from cloud.server import CloudServer
from edge.app import Gateway
from edge.settings import GatewaySettings
from edge.store.dbthread import open_database
from provisioning.cloud_api import CloudApi

ADMIN_EMAIL = "admin@sync-sec.example"
ADMIN_PASSWORD = "sync security admin password"
CATALOG = [
    {"slot": "A1", "name": "Water", "category": "drinks", "price": 2000, "quantity": 5},
    {"slot": "A2", "name": "Chips", "category": "snacks", "price": 3500, "quantity": 3},
]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def sync_postgres_url() -> Iterator[str]:
    """A database of its own per test: each cloud generates its own master key in its data
    directory, and a database sealed under another test's key would refuse to open."""
    with scratch_postgres("vending_secsync") as name:
        yield postgres_sqlalchemy_url(name)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sync_cloud_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}"
    return str(request.getfixturevalue("sync_postgres_url"))


@dataclass
class SyncedSite:
    root: Path
    cloud: CloudServer
    admin: CloudApi
    site_id: str
    machine_id: str
    catalog: dict[str, str]  # slot -> catalog item id
    gateway: Gateway
    http: aiohttp.ClientSession
    # The last kiosk cash order's token: the next one replaces it (one open cash order per
    # machine, and only its token's holder may replace it).
    last_order_token: str | None = None

    @property
    def config_file(self) -> Path:
        """Settings for the CLI: the same database as the running gateway."""
        path = self.root / "gateway.json"
        if not path.exists():
            path.write_text(json.dumps({"data_dir": str(self.gateway.settings.data_dir)}))
        return path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``vending-gateway dead-letters ...`` as an operator runs it beside the gateway."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("VENDING_GATEWAY_")}
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "edge",
                "dead-letters",
                "--config",
                str(self.config_file),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            env=env,
            check=False,
        )

    def write_outbox(self, events: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Append (event id, type, payload) rows in one transaction, through a connection of
        its own: what an older gateway version or a gateway bug would have left there."""
        db = open_database(self.gateway.settings.db_path)
        try:
            db.execute("BEGIN IMMEDIATE")
            for event_id, type_, payload in events:
                db.execute(
                    "INSERT INTO outbox (event_id, type, payload, occurred_at) VALUES (?, ?, ?, ?)",
                    [event_id, type_, json.dumps(payload), datetime.now(UTC).isoformat()],
                )
            db.execute("COMMIT")
        finally:
            db.close()

    def gateway_sql(self, sql: str, params: list[Any]) -> None:
        conn = sqlite3.connect(self.gateway.settings.db_path, timeout=10)
        try:
            with conn:
                conn.execute(sql, params)
        finally:
            conn.close()

    async def health(self) -> dict[str, Any]:
        async with self.http.get("/health") as response:
            return dict((await response.json())["data"])

    async def kiosk_cash_order(self, slot: str = "A1") -> str:
        body = {
            "machine_id": self.machine_id,
            "items": [{"id": self.catalog[slot], "quantity": 1}],
            "payment_method": "cash",
        }
        headers = {"X-Order-Token": self.last_order_token} if self.last_order_token else {}
        async with self.http.post("/api/v1/orders", json=body, headers=headers) as response:
            payload = await response.json()
            assert response.status in (200, 201), payload
            self.last_order_token = payload["data"]["order_token"]
            return str(payload["data"]["id"])

    async def cloud_order(self, order_id: str) -> dict[str, Any] | None:
        orders = await self.admin.request("GET", f"/orders?machine_id={self.machine_id}&limit=200")
        found = [o for o in orders if o["id"] == order_id]
        return dict(found[0]) if found else None

    async def cloud_dead_letters(self, state: str = "open") -> list[dict[str, Any]]:
        return list(await self.admin.request("GET", f"/sync/dead-letters?state={state}"))


def gateway_settings(root: Path, cloud_url: str, token: str) -> GatewaySettings:
    return enrolled_gateway_settings(
        root,
        cloud_url,
        token,
        gateway_name="sync-sec-gateway",
        sync_pull_interval_s=0.5,
        sync_backoff_max_s=1.0,
        engine_tick_s=0.2,
    )


@pytest.fixture
async def synced_site(tmp_path: Path, sync_cloud_db: str) -> AsyncIterator[SyncedSite]:
    settings = cloud_test_settings(
        sync_cloud_db, tmp_path / "cloud-data", jwt_secret="sync-sec-secret-" + "x" * 40
    )
    suffix = uuid.uuid4().hex[:8]
    async with contextlib.AsyncExitStack() as stack:
        cloud = await stack.enter_async_context(CloudServer(settings))
        email = f"{suffix}-{ADMIN_EMAIL}"
        await cloud.create_tenant(f"Sync security {suffix}", email, ADMIN_PASSWORD)
        admin = await stack.enter_async_context(CloudApi(cloud.api_url))
        await admin.login(email, ADMIN_PASSWORD)
        site_id = (await admin.create_site(f"Site {suffix}", "Loopback"))["id"]
        onboarded = await admin.onboard_machine(name="Lobby", site_id=site_id, catalog=CATALOG)
        machine = onboarded["machine"]
        token = await admin.enrollment_token(site_id)
        gateway = await stack.enter_async_context(
            Gateway(gateway_settings(tmp_path, cloud.api_url, token))
        )

        async def ready() -> bool:
            return bool(gateway.cloud.status()["enrolled"]) and bool(
                await gateway.store.list_machines()
            )

        await wait_for(ready, within=30)
        http = await stack.enter_async_context(aiohttp.ClientSession(base_url=gateway.http_url))
        yield SyncedSite(
            root=tmp_path,
            cloud=cloud,
            admin=admin,
            site_id=site_id,
            machine_id=machine["id"],
            catalog={item["slot"]: item["id"] for item in machine["catalog"]},
            gateway=gateway,
            http=http,
        )


def order_snapshot(order_id: str, machine_id: str, catalog_item_id: str) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    return {
        "id": order_id,
        "machine_id": machine_id,
        "status": "completed",
        "payment_method": "cash",
        "total_amount": 2000,
        "paid_amount": 2000,
        "currency": "INR",
        "customer_name": "Eve",
        "items": [
            {
                "id": f"{order_id}-1",
                "catalog_item_id": catalog_item_id,
                "slot": "A1",
                "name": "Water",
                "unit_price": 2000,
                "quantity": 1,
                "dispensed": 1,
                "dispense_status": "dispensed",
            }
        ],
        "created_at": now,
        "updated_at": now,
        "version": 1,
    }
