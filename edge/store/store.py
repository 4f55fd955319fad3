"""``GatewayStore``: the gateway's database API on the event loop.

Writes go to one writer thread (each call is one transaction); reads go to a reader thread with
its own connection (WAL lets it read while the writer writes). After a write commits, the store
publishes which orders changed on its ``ChangeFeed``.
"""

import asyncio
import json
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import sqlite_utils
from pydantic import ValidationError

from contracts.device_messages import CashCredit
from contracts.orders import DispenseOutcome, OrderStatus
from contracts.sealing import KeyRing, SealingError
from contracts.sync import (
    MoneyPolicy,
    OutboxEvent,
    PaymentIntent,
    PaymentUpdate,
    RefundUpdate,
    RejectedEvent,
    StateResponse,
)
from edge.errors import OrderNotFound, StoreError
from edge.settings import GatewaySettings
from edge.store import dead_letters, ledger, sealed, sequences, signed
from edge.store.changes import ChangeFeed
from edge.store.dbthread import DbThread
from edge.store.schema import migrations
from edge.store.views import (
    CatalogItemView,
    CreditOutcome,
    MachineView,
    NewOrder,
    OrderCapability,
    OrderView,
    PendingCommand,
    ResultOutcome,
)

log = logging.getLogger(__name__)

Db = sqlite_utils.Database


def _open_writer(ring: KeyRing) -> Callable[[Db], None]:
    def on_open(db: Db) -> None:
        db.execute("PRAGMA journal_mode = WAL")
        sealed.bind(db, ring)
        # Before the migrations: m005 would otherwise seal old plaintext with a wrong key.
        sealed.check_keys(db)
        migrations.apply(db)
        sealed.mark_active_key(db)

    return on_open


def _open_reader(ring: KeyRing) -> Callable[[Db], None]:
    return lambda db: sealed.bind(db, ring)


def _create_private(path: Path) -> None:
    """The database file exists with mode 0600 before SQLite opens it (SQLite gives its -wal
    and -shm files the database file's mode)."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)


class GatewayStore:
    """Implements ``edge.sync.ports.SyncStore`` plus what the engine, link and API need."""

    def __init__(self, settings: GatewaySettings) -> None:
        self._path = settings.db_path
        self._settings = settings
        self._writer = DbThread(self._path, "store-writer", transactional=True)
        self._reader = DbThread(self._path, "store-reader", transactional=False)
        self.changes = ChangeFeed()
        self._outbox_event = asyncio.Event()
        self._sidecar = sequences.sidecar_path(self._path)
        self._marks: sequences.Marks = {}
        self._sidecar_lock = asyncio.Lock()

    async def __aenter__(self) -> "GatewayStore":
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The data directory holds the database, the master key and the TLS key: owner only,
        # also when it was made by hand or by an older version.
        os.chmod(self._path.parent, 0o700)
        try:
            ring = self._settings.key_ring()
        except SealingError as exc:
            raise StoreError(f"master keys: {exc}") from exc
        _create_private(self._path)
        await asyncio.to_thread(self._writer.start, _open_writer(ring))
        await asyncio.to_thread(self._reader.start, _open_reader(ring))
        await self._load_sequence_marks()
        return self

    async def _load_sequence_marks(self) -> None:
        """The higher of the database's and the sidecar's high-water marks (a database restored
        from an older copy must not let old device messages in again)."""
        in_db = await self._reader.run(sequences.marks)
        side = await asyncio.to_thread(sequences.read_sidecar, self._sidecar)
        restored = sorted(m for m, high in side.items() if high > in_db.get(m, 0))
        if restored:
            log.warning(
                "database is behind the device sequence sidecar for %s: restored from an older "
                "copy? Their messages up to the sidecar's marks are refused unless recorded",
                ", ".join(machine_id for machine_id, _ in restored),
            )
        self._marks = sequences.merged(in_db, side)
        await asyncio.to_thread(sequences.write_sidecar, self._sidecar, self._marks)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self._reader.stop)
        await asyncio.to_thread(self._writer.stop)

    async def _notify(self, order_ids: list[str | None], outbox: bool = True) -> None:
        ids = [order_id for order_id in order_ids if order_id]
        if ids:
            await self.changes.publish(ids)
        if outbox:
            self._outbox_event.set()

    async def health_counts(self) -> tuple[int, dict[str, int], int]:
        """What ``/health`` reports, read in one trip to the reader thread: the outbox backlog,
        active machines online and offline, and open dead letters."""
        return await self._reader.run(
            lambda db: (_outbox_backlog(db), _device_counts(db), dead_letters.open_count(db))
        )

    # --- SyncStore -----------------------------------------------------------------------------

    async def outbox_pending(self, limit: int) -> list[OutboxEvent]:
        def read(db: Db) -> tuple[list[OutboxEvent], list[tuple[str, str]]]:
            rows = db.execute(
                "SELECT * FROM outbox WHERE sent = 0 ORDER BY seq LIMIT ?", [limit]
            ).fetchall()
            events: list[OutboxEvent] = []
            unreadable: list[tuple[str, str]] = []
            for row in rows:
                try:
                    events.append(_outbox_event(db, row))
                except ValidationError as exc:
                    unreadable.append((row["event_id"], _describe(exc)))
                except ValueError as exc:
                    unreadable.append((row["event_id"], str(exc)))
            return events, unreadable

        events, unreadable = await self._reader.run(read)
        if unreadable:
            # A row this gateway cannot even read as an event (written by another version, or
            # damaged) would stop the push loop for good: set it aside like a refused event.
            await self._writer.run(lambda db: _move_unreadable(db, unreadable))
            log.warning(
                "outbox rows this gateway cannot read, moved to the dead letters: %s",
                ", ".join(event_id for event_id, _ in unreadable),
            )
        return events

    async def outbox_acknowledged(self, ack_seq: int) -> None:
        await self._writer.run(
            lambda db: db.execute(
                "UPDATE outbox SET sent = 1 WHERE seq <= ? AND sent = 0", [ack_seq]
            )
        )

    async def outbox_settled(self, ack_seq: int, rejected: list[RejectedEvent]) -> int:
        def settle(db: Db) -> int:
            moved = sum(
                dead_letters.move_aside(
                    db,
                    r.event_id,
                    source=dead_letters.CLOUD,
                    http_status=None,
                    code=r.code,
                    error=r.message,
                )
                for r in rejected
            )
            db.execute("UPDATE outbox SET sent = 1 WHERE seq <= ? AND sent = 0", [ack_seq])
            return moved

        return await self._writer.run(settle)

    async def dead_letter(self, event_id: str, status: int | None, code: str, error: str) -> bool:
        return await self._writer.run(
            lambda db: dead_letters.move_aside(
                db,
                event_id,
                source=dead_letters.ISOLATED,
                http_status=status,
                code=code,
                error=error,
            )
        )

    async def dead_letter_count(self) -> int:
        return await self._reader.run(dead_letters.open_count)

    async def list_dead_letters(
        self, include_retried: bool = False
    ) -> list[dead_letters.DeadLetter]:
        return await self._reader.run(
            lambda db: dead_letters.listing(db, include_retried=include_retried)
        )

    async def retry_dead_letters(self, ids: list[int] | None = None) -> list[tuple[int, int]]:
        moved = await self._writer.run(lambda db: dead_letters.retry(db, ids))
        if moved:
            self._outbox_event.set()
        return moved

    async def outbox_backlog(self) -> int:
        return await self._reader.run(_outbox_backlog)

    async def state_cursor(self) -> int:
        row = await self._reader.run(
            lambda db: db.execute("SELECT value FROM kv WHERE key = 'state_cursor'").fetchone()
        )
        return int(row[0]) if row else 0

    async def apply_state(self, state: StateResponse) -> None:
        await self._writer.run(lambda db: _apply_state(db, state))

    async def apply_payment_update(self, message_id: str, update: PaymentUpdate) -> None:
        order_id = await self._writer.run(
            lambda db: ledger.apply_payment_update(db, message_id, update)
        )
        await self._notify([order_id])

    async def apply_refund_update(self, message_id: str, update: RefundUpdate) -> None:
        """Record where a refund stands (idempotent by ``message_id``; ``refunded`` and
        ``voided`` are final), so the kiosk shows it with the order."""
        order_id = await self._writer.run(
            lambda db: ledger.apply_refund_update(db, message_id, update)
        )
        # The order's view changed, not the order: no snapshot, no outbox event.
        await self._notify([order_id], outbox=False)

    async def wait_outbox(self, max_wait: float) -> None:
        try:
            async with asyncio.timeout(max_wait):
                await self._outbox_event.wait()
        except TimeoutError:
            return
        self._outbox_event.clear()

    # --- machines and catalog ------------------------------------------------------------------

    async def list_machines(self) -> list[MachineView]:
        rows = await self._reader.run(
            lambda db: db.execute(
                "SELECT id, name, location, online FROM machines WHERE status = 'active' "
                "ORDER BY name, id"
            ).fetchall()
        )
        return [
            MachineView(
                id=r["id"], name=r["name"], location=r["location"], online=bool(r["online"])
            )
            for r in rows
        ]

    async def machine_exists(self, machine_id: str) -> bool:
        row = await self._reader.run(
            lambda db: db.execute(
                "SELECT 1 FROM machines WHERE id = ? AND status = 'active'", [machine_id]
            ).fetchone()
        )
        return row is not None

    async def catalog(self, machine_id: str) -> list[CatalogItemView]:
        rows = await self._reader.run(
            lambda db: db.execute(
                "SELECT * FROM catalog WHERE machine_id = ? AND active = 1 ORDER BY slot",
                [machine_id],
            ).fetchall()
        )
        return [
            CatalogItemView(
                id=r["id"],
                slot=r["slot"],
                name=r["name"],
                price=r["price"],
                currency=r["currency"],
                # A disabled slot has nothing to order now, whatever is in it.
                quantity=max(r["quantity"] - r["reserved"], 0) if r["enabled"] else 0,
                category=r["category"],
                image_url=r["image_url"],
                enabled=bool(r["enabled"]),
                disabled_reason=None if r["enabled"] else r["disabled_reason"],
            )
            for r in rows
        ]

    async def money_policy(self, machine_id: str) -> MoneyPolicy:
        """The tenant's money policy for the machine, as the last state pull gave it (the
        defaults for an unknown machine or before the first pull)."""
        return await self._reader.run(lambda db: ledger.money_policy(db, machine_id))

    async def stock(self, catalog_item_id: str) -> tuple[int, int]:
        """(quantity, reserved) of one catalog item; for tests and tools."""
        row = await self._reader.run(
            lambda db: db.execute(
                "SELECT quantity, reserved FROM catalog WHERE id = ?", [catalog_item_id]
            ).fetchone()
        )
        if row is None:
            raise OrderNotFound(catalog_item_id)
        return int(row[0]), int(row[1])

    async def machine_secret_hash(self, machine_id: str) -> str | None:
        """The MQTT secret hash of an active machine, None when unknown or decommissioned."""
        row = await self._reader.run(
            lambda db: db.execute(
                "SELECT mqtt_secret_hash FROM machines WHERE id = ? AND status = 'active'",
                [machine_id],
            ).fetchone()
        )
        return row[0] if row else None

    async def set_presence(self, machine_id: str, online: bool, fw: str | None) -> None:
        await self._writer.run(
            lambda db: db.execute(
                "UPDATE machines SET online = ?, fw = COALESCE(?, fw), last_seen = ? WHERE id = ?",
                [int(online), fw, ledger.now_iso(), machine_id],
            )
        )

    async def touch_machine(self, machine_id: str) -> None:
        await self._writer.run(
            lambda db: db.execute(
                "UPDATE machines SET last_seen = ? WHERE id = ?", [ledger.now_iso(), machine_id]
            )
        )

    async def device_counts(self) -> dict[str, int]:
        return await self._reader.run(_device_counts)

    # --- orders --------------------------------------------------------------------------------

    async def create_order(
        self,
        order: NewOrder,
        idempotency_key: str | None,
        request_hash: str,
        capability: OrderCapability | None = None,
    ) -> tuple[OrderView, bool]:
        view, created, superseded = await self._writer.run(
            lambda db: ledger.create_order(db, order, idempotency_key, request_hash, capability)
        )
        if created:
            await self._notify([*superseded, view.id])
        return view, created

    async def get_order(self, order_id: str) -> OrderView:
        view = await self._reader.run(lambda db: ledger.load_order(db, order_id))
        if view is None:
            raise OrderNotFound(order_id)
        return view

    async def attach_payment(self, intent: PaymentIntent) -> OrderView:
        view = await self._writer.run(lambda db: ledger.attach_payment(db, intent))
        await self._notify([view.id])
        return view

    async def cancel_order(self, order_id: str, reason: str = ledger.CANCEL_REQUESTED) -> OrderView:
        view = await self._writer.run(lambda db: ledger.cancel_order(db, order_id, reason))
        await self._notify([view.id])
        return view

    async def cancel_order_with_token(self, order_id: str, presented_hash: str | None) -> OrderView:
        view = await self._writer.run(
            lambda db: ledger.cancel_order_with_token(db, order_id, presented_hash)
        )
        await self._notify([view.id])
        return view

    async def expire_orders(self, older_than_s: float) -> list[str]:
        cutoff = (datetime.now(UTC) - timedelta(seconds=older_than_s)).isoformat()
        expired = await self._writer.run(lambda db: ledger.expire_orders(db, cutoff))
        if expired:
            await self._notify(list(expired))
        return expired

    async def machine_credit(self, machine_id: str, currency: str) -> int:
        """Cash received on the machine that no order holds; it pays the next cash order."""
        return await self._reader.run(lambda db: ledger.machine_credit(db, machine_id, currency))

    async def record_cash_credit(self, machine_id: str, credit: CashCredit) -> CreditOutcome:
        outcome = await self._writer.run(
            lambda db: ledger.record_cash_credit(db, machine_id, credit)
        )
        if not outcome.duplicate:
            await self._notify([outcome.order_id])
        return outcome

    async def record_signed_message(
        self, machine_id: str, suffix: str, payload: bytes
    ) -> signed.DeviceOutcome:
        """Verify and apply what a device signed (``edge.store.signed``), in one transaction;
        then raise the sidecar's high-water mark."""
        marks = self._marks
        outcome = await self._writer.run(
            lambda db: signed.apply(db, machine_id, suffix, payload, marks)
        )
        # An inventory report changes no order and adds nothing to the outbox.
        if outcome.status in ("applied", "corrected") and outcome.ack_id is not None:
            await self._notify([outcome.order_id])
        if outcome.mark is not None:
            mark, high = outcome.mark
            if high > self._marks.get(mark, 0):
                async with self._sidecar_lock:
                    if high > self._marks.get(mark, 0):
                        self._marks = self._marks | {mark: high}
                        await asyncio.to_thread(
                            sequences.write_sidecar, self._sidecar, self._marks, sync=False
                        )
        return outcome

    async def record_timeout(self, machine_id: str, cmd_id: str) -> ResultOutcome:
        """No result arrived in time: the unit's outcome is unknown (never retried)."""
        outcome = await self._writer.run(
            lambda db: ledger.record_dispense_result(
                db, machine_id, cmd_id, DispenseOutcome.UNKNOWN, ledger.NO_RESULT, None
            )
        )
        if outcome.status == "applied":
            await self._notify([outcome.order_id])
        return outcome

    async def next_command(self, order_id: str, ttl_s: int) -> PendingCommand | None:
        command = await self._writer.run(lambda db: ledger.next_command(db, order_id, ttl_s))
        if command is None or not command.resumed:
            await self._notify([order_id])
        return command

    async def orders_to_dispense(self) -> list[tuple[str, str]]:
        """(order id, machine id) of paid or dispensing orders, oldest first."""
        rows = await self._reader.run(
            lambda db: db.execute(
                "SELECT id, machine_id FROM orders WHERE status IN (?, ?) ORDER BY created_at, id",
                [OrderStatus.PAID.value, OrderStatus.DISPENSING.value],
            ).fetchall()
        )
        return [(r[0], r[1]) for r in rows]

    async def command_result(self, cmd_id: str) -> str | None:
        row = await self._reader.run(
            lambda db: db.execute(
                "SELECT result FROM dispense_commands WHERE cmd_id = ?", [cmd_id]
            ).fetchone()
        )
        return row[0] if row else None

    async def rekey(self) -> sealed.RekeyReport:
        """Re-seal every sealed value under the active master key and forget the older keys'
        canaries (after this, the older keys may be removed from the settings)."""
        return await self._writer.run(lambda db: sealed.reseal_all(db, retire=True))

    async def query(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        """Read-only rows as dicts; for tests and diagnostics."""
        rows = await self._reader.run(lambda db: db.execute(sql, params or []).fetchall())
        return [dict(row) for row in rows]


def _outbox_event(db: Db, row: Any) -> OutboxEvent:
    """Raises ``ValueError`` (pydantic's ``ValidationError`` is one) for a row that is not an
    event this gateway can send."""
    try:
        payload = json.loads(row["payload"])
        occurred_at = datetime.fromisoformat(row["occurred_at"])
    except TypeError as exc:
        raise ValueError(str(exc)) from exc
    if not isinstance(payload, dict):
        raise ValueError("the payload is not a JSON object")
    return OutboxEvent(
        seq=row["seq"],
        event_id=row["event_id"],
        type=row["type"],
        occurred_at=occurred_at,
        payload=sealed.open_outbox_payload(db, row["event_id"], payload),
    )


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
        for e in exc.errors(include_url=False, include_input=False)[:5]
    )


def _move_unreadable(db: Db, unreadable: list[tuple[str, str]]) -> None:
    for event_id, error in unreadable:
        dead_letters.move_aside(
            db,
            event_id,
            source=dead_letters.UNREADABLE,
            http_status=None,
            code="unreadable_event",
            error=error,
        )


def _apply_state(db: Db, state: StateResponse) -> None:
    for machine in state.machines:
        db.execute(
            "INSERT INTO machines (id, tenant_id, site_id, name, location, status, "
            "mqtt_secret_hash, command_key, currency, config, version, money_policy) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
            "tenant_id = excluded.tenant_id, site_id = excluded.site_id, name = excluded.name, "
            "location = excluded.location, status = excluded.status, "
            "mqtt_secret_hash = excluded.mqtt_secret_hash, command_key = excluded.command_key, "
            "currency = excluded.currency, config = excluded.config, version = excluded.version, "
            "money_policy = excluded.money_policy",
            [
                machine.id,
                machine.tenant_id,
                machine.site_id,
                machine.name,
                machine.location,
                machine.status,
                machine.mqtt_secret_hash,
                sealed.seal_command_key(db, machine.id, machine.command_key),
                machine.currency,
                json.dumps(machine.config),
                machine.version,
                machine.money_policy.model_dump_json(),
            ],
        )
        seen: list[str] = []
        for item in machine.catalog:
            seen.append(item.id)
            existing = db.execute(
                "SELECT stock_rev, quantity, enable_rev FROM catalog WHERE id = ?", [item.id]
            ).fetchone()
            values = {
                "machine_id": machine.id,
                "slot": item.slot,
                "name": item.name,
                "category": item.category,
                "price": item.price,
                "currency": item.currency,
                "capacity": item.capacity,
                "image_url": item.image_url,
                "active": int(item.active),
                "stock_rev": item.stock_rev,
            }
            if existing is None:
                db.table("catalog").insert(
                    {
                        "id": item.id,
                        "quantity": item.quantity,
                        "reserved": 0,
                        "enabled": int(item.enabled),
                        "enable_rev": item.enable_rev,
                        "disabled_reason": None if item.enabled else ledger.SLOT_OPERATOR,
                        **values,
                    }
                )
                continue
            # The cloud's count wins only after an operator restock (new stock_rev); otherwise
            # the local count already includes sales the cloud has not heard of yet.
            if existing["stock_rev"] != item.stock_rev:
                values["quantity"] = item.quantity
            db.table("catalog").update(item.id, values)
            if "quantity" in values and item.quantity != existing["quantity"]:
                ledger.inventory_event(db, item.id, item.quantity - existing["quantity"], "restock")
            # Like the stock: the cloud's switch wins only when an operator set it (a new
            # enable_rev); a slot the gateway disabled after jams stays off until then.
            if existing["enable_rev"] != item.enable_rev:
                ledger.set_slot_enabled(
                    db,
                    item.id,
                    enabled=item.enabled,
                    reason=ledger.SLOT_OPERATOR,
                    enable_rev=item.enable_rev,
                )
        marks = ",".join("?" for _ in seen)
        db.execute(
            f"UPDATE catalog SET active = 0 WHERE machine_id = ? AND id NOT IN ({marks})",
            [machine.id, *seen],
        )
    db.execute(
        "INSERT INTO kv (key, value) VALUES ('state_cursor', ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [str(state.cursor)],
    )


def _outbox_backlog(db: Db) -> int:
    return int(db.execute("SELECT COUNT(*) FROM outbox WHERE sent = 0").fetchone()[0])


def _device_counts(db: Db) -> dict[str, int]:
    rows = db.execute(
        "SELECT online, COUNT(*) FROM machines WHERE status = 'active' GROUP BY online"
    ).fetchall()
    counts = {"online": 0, "offline": 0}
    for online, count in rows:
        counts["online" if online else "offline"] += int(count)
    return counts
