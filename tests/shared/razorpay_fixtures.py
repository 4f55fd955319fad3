"""Fixtures for cloud tests against the local Razorpay test server (tools/razorpay_server).

Use from a test module (pytest registers fixtures by the names imported)::

    from razorpay_fixtures import razorpay_cloud_settings, razorpay_server, upi_tenant

``razorpay_cloud_settings`` is registered as ``settings``: importing it makes the module's
``cloud`` fixture (tests/shared/cloud_fixtures.py) talk to the test server, with quick polling
and a breaker that opens after 2 failures. ``upi_tenant`` configures a tenant's Razorpay
credentials through the admin API and the same account on the test server (its webhooks go to
the cloud's webhook URL), and returns a ``RazorpayAccount``.
"""

import secrets
import string
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cloud_fixtures import MASTER_KEYS, Tenant, cloud_test_settings

from cloud.db import schema as t
from cloud.server import CloudServer
from cloud.settings import CloudSettings
from tools.razorpay_server import RazorpayTestServer

_ALNUM = string.ascii_letters + string.digits


def _alnum(n: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


@dataclass
class RazorpayAccount:
    tenant: Tenant
    key_id: str
    key_secret: str = field(repr=False)
    webhook_secret: str = field(repr=False)
    webhook_url: str


def new_credentials() -> dict[str, str]:
    """A fresh key id, key secret and webhook secret in Razorpay's formats."""
    return {
        "key_id": f"rzp_test_{_alnum(14)}",
        "key_secret": _alnum(24),
        "webhook_secret": f"whsec-{_alnum(20)}",
    }


def razorpay_settings(
    database_url: str, data_dir: Path, razorpay_url: str, **overrides: Any
) -> CloudSettings:
    values: dict[str, Any] = {
        "master_keys": MASTER_KEYS,
        "razorpay_api_url": razorpay_url,
        "razorpay_timeout_s": 2.0,
        "razorpay_poll_after_s": 0.5,
        "razorpay_poll_interval_s": 0.3,
        "provider_breaker_threshold": 2,
        "provider_breaker_recovery_s": 60.0,
        "provider_close_backoff_base_s": 0.1,
        "provider_close_backoff_max_s": 0.5,
    }
    return cloud_test_settings(database_url, data_dir, **(values | overrides))


@pytest.fixture
async def razorpay_server() -> AsyncIterator[RazorpayTestServer]:
    # Webhook retries quick, so a test that drops or fails one does not wait long.
    async with RazorpayTestServer(
        webhook_retry_delays=(0.2, 0.5, 1.0), refund_delay_s=0.1, expiry_sweep_s=0.2
    ) as server:
        yield server


@pytest.fixture(name="settings")
def razorpay_cloud_settings(
    db_url: str, tmp_path: Path, razorpay_server: RazorpayTestServer
) -> CloudSettings:
    return razorpay_settings(db_url, tmp_path / "cloud-data", razorpay_server.url)


async def configure_razorpay(
    cloud: CloudServer,
    razorpay_server: RazorpayTestServer,
    tenant: Tenant,
    *,
    events: list[str] | None = None,
) -> RazorpayAccount:
    """The tenant's Razorpay account: created on the test server, set through the admin API."""
    creds = new_credentials()
    reply = await tenant.admin.call(
        "PUT", "/api/v1/payments/provider", {"provider": "razorpay"} | creds
    )
    assert reply.status == 200, reply.body
    url = reply.data["webhook_url"]
    assert url == f"{cloud.api_url}/api/v1/webhooks/razorpay/{tenant.id}"
    razorpay_server.add_account(
        creds["key_id"], creds["key_secret"], creds["webhook_secret"], url, events=events
    )
    return RazorpayAccount(
        tenant, creds["key_id"], creds["key_secret"], creds["webhook_secret"], url
    )


@pytest.fixture
async def upi_tenant(
    cloud: CloudServer, razorpay_server: RazorpayTestServer, tenant: Tenant
) -> AsyncIterator[Any]:
    """``await upi_tenant()`` configures the default tenant; ``await upi_tenant(other)`` another.

    Afterwards the tenants' provider rows are removed: the Postgres database is shared by the
    session, and later tests' clouds would otherwise keep polling these payments (against
    their own test server, which does not know the key)."""
    configured: list[str] = []

    async def configure(owner: Tenant = tenant, **kwargs: Any) -> RazorpayAccount:
        configured.append(owner.id)
        return await configure_razorpay(cloud, razorpay_server, owner, **kwargs)

    yield configure
    if configured:
        async with cloud.engine.begin() as conn:
            await conn.execute(
                t.payment_providers.delete().where(t.payment_providers.c.tenant_id.in_(configured))
            )


def upi_payment_body(
    machine_id: str, order_id: str | None = None, amount: int = 2500, key: str | None = None
) -> dict[str, Any]:
    """A gateway's ``POST /sync/v1/payments`` body for a UPI payment."""
    return {
        "order_id": order_id or str(uuid.uuid4()),
        "machine_id": machine_id,
        "amount": amount,
        "currency": "INR",
        "method": "upi",
        "idempotency_key": key or f"idem-{uuid.uuid4().hex}",
    }


async def payment_row(cloud: CloudServer, payment_id: str) -> Any:
    async with cloud.engine.connect() as conn:
        return (
            await conn.execute(sa.select(t.payments).where(t.payments.c.id == payment_id))
        ).one()
