"""Attack 4 / secrets at rest, cloud side: a copy of the cloud database (a backup, a replica, a
stolen disk) holds no device command key and no customer phone number; a wrong or missing master
key stops the cloud at start; ``vending-cloud rekey`` moves everything to a new key while the old
key still opens what it sealed until then."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from sec_secrets_support import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    PHONE,
    Database,
    cloud_settings,
    database,
    secrets_site,
)

from cloud.db import schema as t
from cloud.db.engine import create_engine
from cloud.errors import ConfigurationError
from cloud.server import CloudServer
from contracts.sealing import KeyRing
from provisioning.cloud_api import CloudApi

__all__ = ["database"]  # the fixture, imported for pytest


async def test_neither_database_holds_a_command_key_or_phone(
    tmp_path: Path, database: Database
) -> None:
    async with secrets_site(tmp_path, database) as site:
        order_id = await site.kiosk_order_with_phone()
        cloud_order = await site.synced(order_id)
        # The operator still sees the phone number: it is sealed, not lost.
        assert cloud_order["customer_phone"] == PHONE
        key_hex = site.credentials["command_key"]
        cloud_raw = await database.raw_text()
        assert site.machine_id in cloud_raw  # the raw read does see the rows
        assert key_hex not in cloud_raw and key_hex.upper() not in cloud_raw
        assert PHONE[1:] not in cloud_raw
        gateway_raw = b"".join(
            p.read_bytes() for p in site.gateway_dir.glob("gateway.sqlite3*")
        ).decode("latin-1")
        assert site.machine_id in gateway_raw
        assert key_hex not in gateway_raw and PHONE[1:] not in gateway_raw


async def test_wrong_master_key_stops_the_cloud_at_start(
    tmp_path: Path, database: Database
) -> None:
    right = KeyRing.generate_text("prod1")
    async with CloudServer(cloud_settings(tmp_path, database, right)):
        pass
    with pytest.raises(ConfigurationError, match="'prod1' does not match"):
        async with CloudServer(cloud_settings(tmp_path, database, "prod1:" + "11" * 32)):
            pass
    with pytest.raises(ConfigurationError, match=r"'prod1'.*not configured"):
        async with CloudServer(cloud_settings(tmp_path, database, KeyRing.generate_text("x"))):
            pass


async def test_plaintext_rows_from_before_are_sealed_at_start(
    tmp_path: Path, database: Database
) -> None:
    """Rows written before revision 0005 (plaintext) are sealed when the cloud starts."""
    keys = KeyRing.generate_text("k1")
    async with secrets_site(tmp_path, database, keys) as site:
        order_id = await site.kiosk_order_with_phone()
        await site.synced(order_id)
        key_hex, machine_id = site.credentials["command_key"], site.machine_id
    engine = create_engine(database.url)
    async with engine.begin() as conn:
        await conn.execute(t.machines.update().values(command_key=key_hex))
        await conn.execute(t.orders.update().values(customer_phone=PHONE))
    await engine.dispose()
    assert key_hex in await database.raw_text()
    async with CloudServer(cloud_settings(tmp_path, database, keys)) as cloud:
        rows = await _sealed_columns(cloud)
        assert rows["command_key"][machine_id].startswith("v1.k1.")
        assert rows["customer_phone"][order_id].startswith("v1.k1.")
    raw = await database.raw_text()
    assert key_hex not in raw and PHONE[1:] not in raw


async def _sealed_columns(cloud: CloudServer) -> dict[str, dict[str, str]]:
    async with cloud.engine.connect() as conn:
        machines = (await conn.execute(sa.select(t.machines.c.id, t.machines.c.command_key))).all()
        orders = (await conn.execute(sa.select(t.orders.c.id, t.orders.c.customer_phone))).all()
    return {
        "command_key": {r[0]: r[1] for r in machines},
        "customer_phone": {r[0]: r[1] for r in orders},
    }


def _rekey(tmp_path: Path, database: Database, keys: str) -> subprocess.CompletedProcess[str]:
    settings = cloud_settings(tmp_path, database, None)
    env = {
        **os.environ,
        "VENDING_CLOUD_DATABASE_URL": settings.database_url,
        "VENDING_CLOUD_DATA_DIR": str(settings.data_dir),
        "VENDING_CLOUD_MASTER_KEYS": keys,
    }
    return subprocess.run(
        [sys.executable, "-m", "cloud", "rekey"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_rekey_reseals_under_the_new_key_and_old_data_stays_readable(
    tmp_path: Path, database: Database
) -> None:
    old, new = KeyRing.generate_text("old"), KeyRing.generate_text("new")
    async with secrets_site(tmp_path, database, old) as site:
        order_id = await site.kiosk_order_with_phone()
        await site.synced(order_id)
        machine_id = site.machine_id
    # New key first (active), old one kept: values sealed under "old" still open.
    async with CloudServer(cloud_settings(tmp_path, database, f"{new}\n{old}")) as cloud:
        columns = await _sealed_columns(cloud)
        assert columns["customer_phone"][order_id].startswith("v1.old.")
    result = _rekey(tmp_path, database, f"{new},{old}")
    assert result.returncode == 0, result.stderr
    assert "1 command keys, 1 phone numbers" in result.stdout, result.stdout
    assert "keys no longer used: old" in result.stdout
    assert old.split(":")[1] not in result.stdout + result.stderr
    # Only the new key now: everything opens, and the gateway still gets its command key.
    async with CloudServer(cloud_settings(tmp_path, database, new)) as cloud:
        columns = await _sealed_columns(cloud)
        assert columns["command_key"][machine_id].startswith("v1.new.")
        assert columns["customer_phone"][order_id].startswith("v1.new.")
        async with CloudApi(cloud.api_url) as admin:
            await admin.login(ADMIN_EMAIL, ADMIN_PASSWORD)
            assert (await admin.order(order_id))["customer_phone"] == PHONE
