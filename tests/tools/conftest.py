"""Fixtures for the Razorpay test server's own tests: the server with fast retries, an API
client authenticated as a merchant, and a webhook receiver that records what arrives."""

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import ClientSession, encode_basic_auth, web

from tools.razorpay_server import RazorpayTestServer

KEY_ID = "rzp_test_vending01"
KEY_SECRET = "test-key-secret-01"
WEBHOOK_SECRET = "test-webhook-secret-01"


def auth(key_id: str, key_secret: str) -> dict[str, str]:
    return {"Authorization": encode_basic_auth(key_id, key_secret)}


@dataclass
class Received:
    headers: dict[str, str]
    raw: bytes

    @property
    def body(self) -> dict[str, Any]:
        return json.loads(self.raw)

    @property
    def event(self) -> str:
        return str(self.body["event"])

    @property
    def event_id(self) -> str:
        return self.headers["X-Razorpay-Event-Id"]


@dataclass
class Receiver:
    """A webhook endpoint. ``statuses`` are answered in turn (then 200); ``stall`` makes it
    never answer the next N requests (the sender must time out)."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def events(self) -> list[str]:
        return [r.event for r in self.received]

    async def wait_for(self, n: int, within: float = 10.0) -> list[Received]:
        async with asyncio.timeout(within):
            while len(self.received) < n:
                self.arrived.clear()
                await self.arrived.wait()
        return self.received

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(Received(dict(request.headers), await request.read()))
        self.arrived.set()
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="ok" if status < 300 else "no")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    rec.url = f"http://{host}:{port}/hook"
    try:
        yield rec
    finally:
        await runner.cleanup()


@pytest.fixture
async def rzp(receiver: Receiver) -> AsyncIterator[RazorpayTestServer]:
    async with RazorpayTestServer(
        webhook_retry_delays=(0.05, 0.1, 0.2),
        webhook_timeout_s=2.0,
        refund_delay_s=0.05,
        expiry_sweep_s=0.05,
    ) as server:
        server.add_account(KEY_ID, KEY_SECRET, WEBHOOK_SECRET, receiver.url)
        yield server


@pytest.fixture
async def http(rzp: RazorpayTestServer) -> AsyncIterator[ClientSession]:
    """A client of the server's REST API, authenticated as the merchant."""
    async with ClientSession(base_url=rzp.url, headers=auth(KEY_ID, KEY_SECRET)) as session:
        yield session


@pytest.fixture
async def anon(rzp: RazorpayTestServer) -> AsyncIterator[ClientSession]:
    async with ClientSession(base_url=rzp.url) as session:
        yield session
