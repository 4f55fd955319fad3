"""The gateway's ``gateway_payments`` circuit breaker on the real gateway: cloud failures open it,
then UPI is refused without asking the cloud (the kiosk learns at once and is told to pay cash),
``payment_methods`` and ``/health`` say so, cash still sells, and a half-open probe closes it.
The breaker's clock is stepped by the test (no waiting for recovery)."""

import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from gw_support import gateway_settings, make_machine, order_body
from standalone_site import MachineCreds
from upi_payments_double import UpiPayments, load_upi_site

from edge.app import Gateway

RECOVERY_S = 30.0


class StepClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Site:
    def __init__(self, gw: Gateway, payments: UpiPayments, clock: StepClock) -> None:
        self.gw, self.payments, self.clock = gw, payments, clock

    async def order(self, method: str = "upi", **extra: Any) -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession(base_url=self.gw.http_url) as http,
            http.post("/api/v1/orders", json=order_body(payment_method=method, **extra)) as r,
        ):
            return r.status, await r.json()

    async def get(self, path: str) -> Any:
        async with (
            aiohttp.ClientSession(base_url=self.gw.http_url) as http,
            http.get(path) as response,
        ):
            body = await response.json()
            return body["data"]  # type: ignore[no-any-return]

    async def upi(self) -> dict[str, Any]:
        data = await self.get("/api/v1/machines/M1/payment-methods")
        return next(m for m in data["payment_methods"] if m["method"] == "upi")

    async def metrics(self) -> str:
        async with (
            aiohttp.ClientSession(base_url=self.gw.http_url) as http,
            http.get("/metrics") as response,
        ):
            return await response.text()


def site_settings(root: Path, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "payments_breaker_failures": 2,
        "payments_breaker_recovery_s": RECOVERY_S,
        "payments_call_timeout_s": 0.3,
        # One test address makes many orders here; the per-client limits are not under test.
        "kiosk_orders_per_minute_per_client": 1000,
    }
    return gateway_settings(root, **(values | overrides))


@pytest.fixture
async def site(tmp_path: Path, creds: dict[str, MachineCreds]) -> AsyncIterator[Site]:
    payments, clock = UpiPayments(), StepClock()
    async with Gateway(
        site_settings(tmp_path / "gw"), payments=payments, breaker_clock=clock
    ) as gw:
        await load_upi_site(gw, [make_machine("M1", creds["M1"], stock={"A1": 5, "A2": 2})])
        yield Site(gw, payments, clock)


async def open_breaker(site: Site, mode: str = "down") -> None:
    site.payments.mode = mode  # type: ignore[assignment]
    for _ in range(2):
        status, body = await site.order()
        assert status == 503
        assert body["error"]["details"]["reason"] == "payment_service_unavailable"
    assert site.gw.engine.payments_breaker.state == "open"


async def test_cloud_failures_open_it_then_upi_is_refused_fast_and_cash_sells(site: Site) -> None:
    assert (await site.upi())["available"] is True
    health = await site.get("/health")
    assert health["status"] == "ok"
    assert health["breakers"]["gateway_payments"]["state"] == "closed"

    await open_breaker(site)
    assert site.payments.calls == 2

    # Refused without asking the cloud: the order is cancelled, its stock back, cash offered.
    status, body = await site.order()
    assert status == 503
    error = body["error"]
    assert error["code"] == "payment_unavailable"
    assert error["details"]["reason"] == "payment_service_unavailable"
    assert error["details"]["alternatives"] == ["cash"]
    assert error["details"]["retry_in_s"] == pytest.approx(RECOVERY_S)
    assert "Nothing was charged" in error["message"] and "cash" in error["message"]
    assert site.payments.calls == 2
    assert await site.gw.store.stock("M1-A1") == (5, 0)
    rows = await site.gw.store.query("SELECT DISTINCT status, cancel_reason FROM orders")
    assert rows == [{"status": "cancelled", "cancel_reason": "payment_unavailable"}]

    upi = await site.upi()
    assert upi["available"] is False
    assert upi["reason"] == "payment_service_unavailable"
    assert "pay with cash" in upi["message"]
    machines = await site.get("/api/v1/machines")
    listed = {m["method"]: m for m in machines[0]["payment_methods"]}
    assert listed["upi"]["available"] is False and listed["cash"]["available"] is True
    assert listed["sandbox"]["reason"] == "payment_service_unavailable"

    health = await site.get("/health")
    assert health["status"] == "degraded"
    snapshot = health["breakers"]["gateway_payments"]
    assert snapshot["state"] == "open" and snapshot["opened_total"] == 1
    text = await site.metrics()
    assert 'gateway_breaker_state{breaker="gateway_payments"} 2.0' in text
    assert 'gateway_payments_refused_fast_total{reason="payment_service_unavailable"} 1.0' in text
    assert 'gateway_breaker_transitions_total{breaker="gateway_payments",state="open"} 1.0' in text

    # Cash does not need the cloud.
    status, cash = await site.order("cash")
    assert status == 201 and cash["data"]["status"] == "awaiting_payment"


async def test_cloud_503_provider_unavailable_and_timeouts_count(site: Site) -> None:
    site.payments.mode = "provider_unavailable"
    status, _ = await site.order()
    assert status == 503
    site.payments.mode = "hang"  # ended by the gateway's per-call timeout
    status, body = await site.order()
    assert status == 503
    assert body["error"]["details"]["reason"] == "payment_service_unavailable"
    assert site.gw.engine.payments_breaker.state == "open"
    assert await site.gw.store.stock("M1-A1") == (5, 0)


async def test_half_open_probe_closes_it(site: Site) -> None:
    await open_breaker(site)
    site.clock.now += RECOVERY_S
    # Half open: UPI is offered again, and the next UPI order is the one probe.
    upi = await site.upi()
    assert upi["available"] is True
    assert (await site.get("/health"))["breakers"]["gateway_payments"]["state"] == "half_open"
    assert 'gateway_breaker_state{breaker="gateway_payments"} 1.0' in await site.metrics()

    site.payments.mode = "ok"
    status, body = await site.order()
    assert status == 201, body
    assert body["data"]["payment"]["provider"] == "razorpay"
    assert site.gw.engine.payments_breaker.state == "closed"
    health = await site.get("/health")
    assert health["status"] == "ok"
    assert health["breakers"]["gateway_payments"]["consecutive_failures"] == 0
    assert 'gateway_breaker_state{breaker="gateway_payments"} 0.0' in await site.metrics()


async def test_failed_probe_reopens_for_a_full_recovery(site: Site) -> None:
    await open_breaker(site)
    site.clock.now += RECOVERY_S
    status, _ = await site.order()  # the probe: the cloud is still down
    assert status == 503
    assert site.payments.calls == 3
    assert site.gw.engine.payments_breaker.state == "open"
    site.clock.now += RECOVERY_S - 1
    status, body = await site.order()
    assert status == 503 and site.payments.calls == 3  # refused fast again
    assert body["error"]["details"]["retry_in_s"] == pytest.approx(1.0)


@pytest.mark.slow
async def test_bench_refuse_fast_latency(site: Site) -> None:
    """While the breaker is open the kiosk hears "UPI unavailable, pay cash" within 100 ms: the
    create (order stored, then cancelled) answers without any call to the cloud."""
    await open_breaker(site, mode="hang")
    samples: list[float] = []
    async with aiohttp.ClientSession(base_url=site.gw.http_url) as http:
        for _ in range(200):
            started = time.perf_counter()
            async with http.post("/api/v1/orders", json=order_body(payment_method="upi")) as r:
                assert r.status == 503
                await r.read()
            samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    p50 = statistics.median(samples)
    p99 = samples[int(len(samples) * 0.99) - 1]
    print(f"refuse-fast latency over {len(samples)} UPI orders: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    assert site.payments.calls == 2
    assert p99 < 100.0
