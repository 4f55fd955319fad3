"""Live servers for the contract tests, and Schemathesis run against them through its CLI (so a
failure prints Schemathesis's own report, with a curl line to reproduce each finding)."""

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from cloud_fixtures import cloud_test_settings
from standalone_site import MachineCreds, machine_state

from cloud.server import CloudServer
from contracts.sync import StateResponse
from edge.app import Gateway
from edge.settings import GatewaySettings

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# Fixed, so a run is reproducible: a failure names the seed and the same run finds it again.
SEED = int(os.environ.get("CONTRACT_TEST_SEED", "20261129"))
# Bounded so each server's run stays well under a minute on a 2-core machine (measured: about
# 20 s for the cloud's 40 operations, 5 s for the kiosk's 11, while other tests ran).
CLOUD_EXAMPLES = int(os.environ.get("CONTRACT_TEST_CLOUD_EXAMPLES", "20"))
KIOSK_EXAMPLES = int(os.environ.get("CONTRACT_TEST_KIOSK_EXAMPLES", "50"))
RUN_TIMEOUT_S = 240.0
PASSWORD = "contract test password 1"


@dataclass
class LiveCloud:
    url: str
    token: str  # an admin's access token: the protected routes get past authentication
    machine_id: str
    site_id: str


@asynccontextmanager
async def live_cloud(tmp: Path) -> AsyncIterator[LiveCloud]:
    settings = cloud_test_settings(
        f"sqlite+aiosqlite:///{tmp / 'cloud.db'}",
        tmp / "cloud-data",
        http_host="127.0.0.1",
        jwt_secret="contract-test-secret-" + "x" * 40,
    )
    async with CloudServer(settings) as server:
        email = f"admin-{uuid.uuid4().hex[:8]}@example.com"
        await server.create_tenant("contracts", email, PASSWORD)
        async with aiohttp.ClientSession(base_url=server.api_url) as http:
            async with http.post(
                "/api/v1/auth/login", json={"email": email, "password": PASSWORD}
            ) as resp:
                assert resp.status == 200, await resp.text()
                token = (await resp.json())["data"]["access_token"]
            auth = {"Authorization": f"Bearer {token}"}
            async with http.post("/api/v1/sites", json={"name": "Lobby"}, headers=auth) as resp:
                assert resp.status == 201, await resp.text()
                site_id = (await resp.json())["data"]["id"]
            machine = {
                "name": "M1",
                "site_id": site_id,
                "catalog": [{"slot": "A1", "name": "Cola", "price": 2500, "quantity": 5}],
            }
            async with http.post("/api/v1/machines/onboard", json=machine, headers=auth) as resp:
                assert resp.status == 201, await resp.text()
                machine_id = (await resp.json())["data"]["machine"]["id"]
        yield LiveCloud(server.api_url, token, machine_id, site_id)


@asynccontextmanager
async def live_gateway(tmp: Path) -> AsyncIterator[Gateway]:
    """A gateway with no cloud link: sandbox orders are a documented 503 there."""
    settings = GatewaySettings(
        data_dir=tmp / "gw",
        http_port=0,
        mqtt_port=0,
        zeroconf_enabled=False,
        # Schemathesis sends thousands of orders from one address: the per-client limits would
        # answer most with 429 and leave the rest untested. The limits have their own tests
        # (test_sec_kiosk_limits.py); 429 is stated in the document all the same.
        kiosk_max_open_orders_per_client=1_000_000,
        kiosk_max_reserved_units_per_client=1_000_000,
        kiosk_orders_per_minute_per_client=1_000_000,
    )
    async with Gateway(settings) as gateway:
        creds = {m: MachineCreds.new(m) for m in ("M1", "M2")}
        catalog = {"A1": ("Cola", "drinks", 2500, 5), "A2": ("Chips", "snacks", 1000, 2)}
        await gateway.store.apply_state(
            StateResponse(
                cursor=1,
                machines=[
                    machine_state(m, creds[m], catalog, name=f"Machine {m}", location="Lobby")
                    for m in creds
                ],
            )
        )
        yield gateway


@dataclass
class RunResult:
    code: int
    output: str


KIOSK_SETTINGS = Path(__file__).with_name("sec_contracts_kiosk.toml")
CLOUD_SETTINGS = Path(__file__).with_name("sec_contracts_cloud.toml")


async def schemathesis_run(
    schema_url: str,
    tmp: Path,
    settings: Path,
    *,
    token: str | None = None,
    max_examples: int,
) -> RunResult:
    """``schemathesis run`` with every check, the fixed seed and the example bound."""
    # The settings file states, next to each setting, why it is there.
    config = tmp / "schemathesis.toml"
    lines = await asyncio.to_thread(lambda: settings.read_text().splitlines())
    if token is not None:
        # Through the environment, so the token is on no command line.
        lines.insert(0, 'headers = { Authorization = "Bearer ${CONTRACT_TEST_TOKEN}" }')
    await asyncio.to_thread(config.write_text, "\n".join(lines) + "\n")
    env = os.environ | {"NO_COLOR": "1", "CONTRACT_TEST_TOKEN": token or ""}
    args = [
        str(SCHEMATHESIS),
        "--config-file",
        str(config),
        "run",
        schema_url,
        "--checks",
        "all",
        "--seed",
        str(SEED),
        "--max-examples",
        str(max_examples),
        "--generation-database",
        "none",
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--no-color",
        "--report-dir",
        str(tmp / "schemathesis-report"),
    ]
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=tmp,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return RunResult(proc.returncode or 0, out.decode(errors="replace"))
