"""Attack 4 / secrets at rest, gateway side: someone who copies the gateway's database file (a
backup, a stolen SD card) finds no command key and no customer phone number in it; a wrong
master key stops the gateway at start with a clear error; rekey moves everything to a new key."""

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from standalone_site import MachineCreds, machine_state

from contracts.orders import PaymentMethod
from contracts.sealing import KeyRing
from contracts.sync import StateResponse
from edge.errors import StoreError
from edge.settings import GatewaySettings
from edge.store import GatewayStore
from edge.store.dbthread import open_database
from edge.store.views import NewOrder, NewOrderLine

PHONE = "+919812345678"


def settings(data_dir: Path, keys: str | None = None) -> GatewaySettings:
    return GatewaySettings(
        data_dir=data_dir, http_port=0, mqtt_port=0, zeroconf_enabled=False, master_keys=keys
    )


def raw_bytes(data_dir: Path) -> bytes:
    """Every byte SQLite keeps on disk for this database (main file, WAL, shared memory)."""
    return b"".join(p.read_bytes() for p in data_dir.glob("gateway.sqlite3*"))


async def fill(store: GatewayStore, creds: MachineCreds) -> str:
    state = machine_state(
        "M1", creds, {"A1": ("Water", "drinks", 2000, 5)}, name="M1", location="Lobby"
    )
    await store.apply_state(StateResponse(cursor=1, machines=[state]))
    order, _ = await store.create_order(
        NewOrder(
            "M1", (NewOrderLine("M1-A1", 1),), PaymentMethod.CASH, "Asha", customer_phone=PHONE
        ),
        None,
        "h1",
    )
    return order.id


async def test_database_file_holds_no_command_key_or_phone(tmp_path: Path) -> None:
    creds = MachineCreds.new("M1")
    async with GatewayStore(settings(tmp_path)) as store:
        order_id = await fill(store, creds)
        # The values still open for the gateway itself.
        assert (await store.get_order(order_id)).customer_phone == PHONE
        events = await store.outbox_pending(100)
        assert any(e.payload.get("customer_phone") == PHONE for e in events)
        raw = raw_bytes(tmp_path)
        assert creds.command_key.encode() not in raw
        assert bytes.fromhex(creds.command_key) not in raw
        assert PHONE.encode() not in raw
        assert PHONE[1:].encode() not in raw
    raw = raw_bytes(tmp_path)
    assert creds.command_key.encode() not in raw and PHONE[1:].encode() not in raw
    assert_private(tmp_path)


def assert_private(data_dir: Path) -> None:
    """The database files and the generated master key: 0600 in a 0700 directory."""
    assert data_dir.stat().st_mode & 0o777 == 0o700
    for path in [*data_dir.glob("gateway.sqlite3*"), data_dir / "master_keys"]:
        assert path.stat().st_mode & 0o777 == 0o600, path


async def test_sealed_value_moved_to_another_row_does_not_open(tmp_path: Path) -> None:
    creds = MachineCreds.new("M1")
    async with GatewayStore(settings(tmp_path)) as store:
        first = await fill(store, creds)
        second, _ = await store.create_order(
            NewOrder("M1", (NewOrderLine("M1-A1", 1),), PaymentMethod.SANDBOX), None, "h2"
        )
    db = open_database(tmp_path / "gateway.sqlite3")
    sealed_phone = db.execute("SELECT customer_phone FROM orders WHERE id = ?", [first]).fetchone()
    db.execute("UPDATE orders SET customer_phone = ? WHERE id = ?", [sealed_phone[0], second.id])
    db.close()
    async with GatewayStore(settings(tmp_path)) as store:
        assert (await store.get_order(first)).customer_phone == PHONE
        with pytest.raises(StoreError, match="another row"):
            await store.get_order(second.id)


async def test_wrong_master_key_fails_at_start(tmp_path: Path) -> None:
    right = KeyRing.generate_text("site1")
    async with GatewayStore(settings(tmp_path, right)) as store:
        await fill(store, MachineCreds.new("M1"))
    wrong = "site1:" + "00" * 32
    with pytest.raises(StoreError, match="'site1' does not match"):
        async with GatewayStore(settings(tmp_path, wrong)):
            pass
    with pytest.raises(StoreError, match=r"'site1'.*not configured"):
        async with GatewayStore(settings(tmp_path, KeyRing.generate_text("other"))):
            pass


async def test_plaintext_rows_from_before_are_sealed_by_the_migration(tmp_path: Path) -> None:
    """A database written before m005 (plaintext command key and phone) is sealed at start."""
    creds = MachineCreds.new("M1")
    async with GatewayStore(settings(tmp_path)) as store:
        order_id = await fill(store, creds)
    db = open_database(tmp_path / "gateway.sqlite3")
    db.execute("UPDATE machines SET command_key = ?", [creds.command_key])
    db.execute("UPDATE orders SET customer_phone = ?", [PHONE])
    db.execute("DELETE FROM _sqlite_migrations WHERE name = 'm005_sealed_secrets'")
    db.close()
    async with GatewayStore(settings(tmp_path)) as store:
        assert (await store.get_order(order_id)).customer_phone == PHONE
        assert await store.next_command(order_id, 60) is None  # unpaid: nothing to send
    raw = raw_bytes(tmp_path)
    assert creds.command_key.encode() not in raw and PHONE[1:].encode() not in raw


async def test_rekey_moves_everything_to_the_new_key(tmp_path: Path) -> None:
    old = KeyRing.generate_text("old")
    new = KeyRing.generate_text("new")
    creds = MachineCreds.new("M1")
    async with GatewayStore(settings(tmp_path, old)) as store:
        order_id = await fill(store, creds)
    # The new key is active, the old one still opens: old data stays readable before rekey.
    async with GatewayStore(settings(tmp_path, f"{new},{old}")) as store:
        assert (await store.get_order(order_id)).customer_phone == PHONE
        # One order event refused by the cloud waits in the dead letters, sealed as it was.
        snapshot = next(e for e in await store.outbox_pending(100) if e.type == "order.snapshot")
        assert await store.dead_letter(snapshot.event_id, 400, "validation_error", "test")
        report = await store.rekey()
        assert report.command_keys == 1 and report.phones == 1 and report.outbox_events >= 1
        assert report.retired_keys == ["old"]
        rows = await store.query("SELECT command_key FROM machines")
        assert rows[0]["command_key"].startswith("v1.new.")
    # After rekey the old key can be dropped.
    async with GatewayStore(settings(tmp_path, new)) as store:
        assert (await store.get_order(order_id)).customer_phone == PHONE
        assert len(await store.retry_dead_letters()) == 1
        events = await store.outbox_pending(100)
        assert any(e.payload.get("customer_phone") == PHONE for e in events)


def test_gateway_rekey_command_prints_key_ids_only(tmp_path: Path) -> None:
    old, new = KeyRing.generate_text("old"), KeyRing.generate_text("new")

    async def fill_with_old_key() -> None:
        async with GatewayStore(settings(tmp_path, old)) as store:
            await fill(store, MachineCreds.new("M1"))

    asyncio.run(fill_with_old_key())
    result = subprocess.run(
        [str(Path(sys.executable).parent / "vending-gateway"), "rekey"],
        env={
            **os.environ,
            "VENDING_GATEWAY_DATA_DIR": str(tmp_path),
            "VENDING_GATEWAY_MASTER_KEYS": f"{new},{old}",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "1 command keys, 1 phone numbers" in result.stdout
    assert "keys no longer used: old" in result.stdout
    for key in (old, new):
        assert key.split(":")[1] not in result.stdout + result.stderr
    wrong = subprocess.run(
        [str(Path(sys.executable).parent / "vending-gateway"), "rekey"],
        env={
            **os.environ,
            "VENDING_GATEWAY_DATA_DIR": str(tmp_path),
            "VENDING_GATEWAY_MASTER_KEYS": "new:" + "00" * 32,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert wrong.returncode == 1
    assert "master key 'new' does not match" in wrong.stderr
