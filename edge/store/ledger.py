"""Transactions on orders, stock, payments and device events.

Every function here runs inside the writer thread's transaction, and every change of an order
writes its outbox events in that same transaction (the outbox pattern): the cloud learns about
exactly the changes that were committed, never about one that was rolled back.
"""

import hmac
import json
import math
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import sqlite_utils

from contracts.device_messages import CashCredit, DispenseResult
from contracts.orders import (
    TERMINAL_ORDER_STATUSES,
    DispenseOutcome,
    ItemDispenseStatus,
    OrderStatus,
    PaymentMethod,
)
from contracts.signing import DispenseCommandBody, down_key, sign_command
from contracts.sync import (
    CashCreditRecord,
    DispenseRecord,
    InventoryChange,
    MoneyPolicy,
    OrderItemSnapshot,
    PaymentIntent,
    PaymentUpdate,
)
from edge.errors import (
    CatalogItemNotFound,
    ClientLimitExceeded,
    IdempotencyConflict,
    InsufficientStock,
    MachineBusy,
    MachineNotFound,
    OrderConflict,
    OrderNotFound,
    OrderTokenInvalid,
    OrderTokenRequired,
    OrderTooLarge,
)
from edge.store import sealed
from edge.store.views import (
    ClientLimits,
    CreditOutcome,
    NewOrder,
    OrderCapability,
    OrderView,
    PaymentView,
    PendingCommand,
    ResultOutcome,
)

Db = sqlite_utils.Database

NO_RESULT = "no_result"  # reason recorded when the gateway gave up waiting for a device

# Why an order was cancelled (orders.cancel_reason; local only, the snapshot has no such field).
CANCEL_REQUESTED = "requested"
CANCEL_EXPIRED = "expired"
CANCEL_PAYMENT_FAILED = "payment_failed"  # the provider reported the payment failed
CANCEL_PAYMENT_UNAVAILABLE = "payment_unavailable"  # no payment could be created for it
CANCEL_SUPERSEDED = "superseded"  # a newer cash order on the same machine replaced it


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def new_id() -> str:
    return uuid.uuid4().hex


# --- outbox ------------------------------------------------------------------------------------


def add_outbox(db: Db, event_id: str, event_type: str, payload: dict[str, Any]) -> None:
    db.execute(
        "INSERT OR IGNORE INTO outbox (event_id, type, payload, occurred_at) VALUES (?, ?, ?, ?)",
        [
            event_id,
            event_type,
            json.dumps(sealed.seal_outbox_payload(db, event_id, payload), separators=(",", ":")),
            now_iso(),
        ],
    )


def inventory_event(db: Db, catalog_id: str, delta: int, reason: str) -> None:
    row = db.execute(
        "SELECT machine_id, slot, quantity FROM catalog WHERE id = ?", [catalog_id]
    ).fetchone()
    change = InventoryChange(
        machine_id=row["machine_id"],
        catalog_item_id=catalog_id,
        slot=row["slot"],
        quantity=max(row["quantity"], 0),
        delta=delta,
        reason=reason,  # type: ignore[arg-type]
    )
    add_outbox(db, new_id(), "inventory.changed", change.model_dump(mode="json"))


# --- machines ----------------------------------------------------------------------------------


def money_policy(db: Db, machine_id: str) -> MoneyPolicy:
    """The machine's money policy as the last state pull stored it; the contract's defaults
    when the machine is unknown or its stored policy cannot be read (an older cloud)."""
    row = db.execute("SELECT money_policy FROM machines WHERE id = ?", [machine_id]).fetchone()
    if row is None:
        return MoneyPolicy()
    try:
        return MoneyPolicy.model_validate_json(row["money_policy"] or "{}")
    except ValueError:
        return MoneyPolicy()


# --- order reads -------------------------------------------------------------------------------


def load_order(db: Db, order_id: str) -> OrderView | None:
    row = db.execute("SELECT * FROM orders WHERE id = ?", [order_id]).fetchone()
    if row is None:
        return None
    items = [
        OrderItemSnapshot(
            id=item["id"],
            catalog_item_id=item["catalog_item_id"],
            slot=item["slot"],
            name=item["name"],
            unit_price=item["unit_price"],
            quantity=item["quantity"],
            dispensed=item["dispensed"],
            failed=item["failed"],
            unknown=item["unknown"],
            dispense_status=ItemDispenseStatus(item["dispense_status"]),
        )
        for item in db.execute(
            "SELECT * FROM order_items WHERE order_id = ? ORDER BY position", [order_id]
        ).fetchall()
    ]
    payment = (
        PaymentView(payment_id=row["payment_id"], qr_payload=row["qr_payload"])
        if row["payment_id"]
        else None
    )
    return OrderView(
        id=row["id"],
        machine_id=row["machine_id"],
        status=OrderStatus(row["status"]),
        payment_method=PaymentMethod(row["payment_method"]),
        total_amount=row["total_amount"],
        paid_amount=row["paid_amount"],
        currency=row["currency"],
        payment=payment,
        customer_name=row["customer_name"],
        customer_phone=sealed.open_phone(db, row["id"], row["customer_phone"]),
        items=items,
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
        version=row["version"],
    )


def _require_order(db: Db, order_id: str) -> OrderView:
    order = load_order(db, order_id)
    if order is None:
        raise OrderNotFound(order_id)
    return order


def touch_order(db: Db, order_id: str, **changes: Any) -> OrderView:
    """Apply ``changes`` to the order row, bump its version and write its snapshot event."""
    assignments = "".join(f"{column} = ?, " for column in changes)
    db.execute(
        f"UPDATE orders SET {assignments}version = version + 1, updated_at = ? WHERE id = ?",
        [*changes.values(), now_iso(), order_id],
    )
    order = _require_order(db, order_id)
    add_outbox(
        db,
        f"{order.id}-v{order.version}",
        "order.snapshot",
        order.to_snapshot().model_dump(mode="json"),
    )
    return order


# --- creating, paying, cancelling --------------------------------------------------------------


def create_order(
    db: Db,
    order: NewOrder,
    idempotency_key: str | None,
    request_hash: str,
    capability: OrderCapability | None = None,
) -> tuple[OrderView, bool, list[str]]:
    """The new order (or the one this idempotency key made before), whether it is new, and the
    ids of the orders it superseded (cancelled in this same transaction).

    ``capability`` is a kiosk API client's: the order stores its token hash and client, may
    supersede only an order of the presented token, and the client's limits apply. Without it
    (the gateway itself, tests of the store) any unpaid cash order is superseded."""
    if idempotency_key is not None:
        seen = db.execute(
            "SELECT request_hash, order_id FROM idempotency_keys WHERE key = ?", [idempotency_key]
        ).fetchone()
        if seen is not None:
            if seen["request_hash"] != request_hash:
                raise IdempotencyConflict(idempotency_key)
            if capability is not None:
                # The replay's answer carries a fresh token (only hashes are kept, so the first
                # one cannot be shown again); the Idempotency-Key is the client's secret.
                db.execute(
                    "UPDATE orders SET token_hash = ? WHERE id = ?",
                    [capability.token_hash, seen["order_id"]],
                )
            return _require_order(db, seen["order_id"]), False, []
    machine = db.execute(
        "SELECT id, currency FROM machines WHERE id = ? AND status = 'active'", [order.machine_id]
    ).fetchone()
    if machine is None:
        raise MachineNotFound(order.machine_id)
    superseded: list[str] = []
    if order.payment_method is PaymentMethod.CASH:
        # Before the stock check, so the replaced order's units are available to the new one.
        superseded = _supersede_open_cash_order(
            db, order.machine_id, capability.presented_hash if capability else None, capability
        )
    if capability is not None:
        # After the supersede: the order it replaces no longer counts against the client.
        _check_client_limits(db, capability.limits, sum(line.quantity for line in order.lines))

    order_id = str(uuid.uuid4())
    created = now_iso()
    total = 0
    items: list[dict[str, Any]] = []
    shortages: list[dict[str, Any]] = []
    for position, line in enumerate(order.lines):
        row = db.execute(
            "SELECT * FROM catalog WHERE id = ? AND machine_id = ? AND active = 1",
            [line.catalog_item_id, order.machine_id],
        ).fetchone()
        if row is None:
            raise CatalogItemNotFound(line.catalog_item_id)
        available = row["quantity"] - row["reserved"]
        if available < line.quantity:
            shortages.append(
                {"id": line.catalog_item_id, "requested": line.quantity, "available": available}
            )
            continue
        total += row["price"] * line.quantity
        items.append(
            {
                "id": new_id(),
                "order_id": order_id,
                "position": position,
                "catalog_item_id": row["id"],
                "slot": row["slot"],
                "name": row["name"],
                "unit_price": row["price"],
                "quantity": line.quantity,
                "dispense_status": ItemDispenseStatus.PENDING.value,
            }
        )
    if shortages:
        raise InsufficientStock(shortages)

    db.table("orders").insert(
        {
            "id": order_id,
            "machine_id": order.machine_id,
            "status": OrderStatus.AWAITING_PAYMENT.value,
            "payment_method": order.payment_method.value,
            "total_amount": total,
            "paid_amount": 0,
            "currency": machine["currency"],
            "customer_name": order.customer_name,
            "customer_phone": sealed.seal_phone(db, order_id, order.customer_phone),
            "token_hash": capability.token_hash if capability else None,
            "client": capability.limits.client if capability else None,
            "created_at": created,
            "updated_at": created,
            "version": 0,
        }
    )
    db.table("order_items").insert_all(items)
    for item in items:
        db.execute(
            "UPDATE catalog SET reserved = reserved + ? WHERE id = ?",
            [item["quantity"], item["catalog_item_id"]],
        )
    if idempotency_key is not None:
        db.execute(
            "INSERT INTO idempotency_keys (key, request_hash, order_id, created_at) "
            "VALUES (?, ?, ?, ?)",
            [idempotency_key, request_hash, order_id, created],
        )
    changes: dict[str, Any] = {}
    if order.payment_method is PaymentMethod.CASH:
        # Credit inserted before the order (kept as machine credit) pays it.
        changes = _pay_from_machine_credit(db, order_id, order.machine_id, machine["currency"])
    return touch_order(db, order_id, **changes), True, superseded


def _supersede_open_cash_order(
    db: Db, machine_id: str, presented_hash: str | None, capability: OrderCapability | None
) -> list[str]:
    """A machine has at most one open cash order, because inserted cash cannot say which order
    it is for. One that holds cash belongs to a customer mid-payment: refuse the new order. An
    unpaid one is replaced only by whoever holds its token (the kiosk starting over): anyone
    else on the LAN could otherwise cancel the customer's order and take the coins they insert
    next. Without a capability (the gateway itself) an unpaid one is replaced."""
    rows = db.execute(
        "SELECT id, paid_amount, token_hash FROM orders WHERE machine_id = ? AND status = ? "
        "AND payment_method = ? ORDER BY created_at, id",
        [machine_id, OrderStatus.AWAITING_PAYMENT.value, PaymentMethod.CASH.value],
    ).fetchall()
    if any(row["paid_amount"] > 0 for row in rows):
        raise MachineBusy(f"machine {machine_id} has a cash order being paid")
    if capability is not None and not all(
        _token_matches(row["token_hash"], presented_hash) for row in rows
    ):
        raise MachineBusy(f"machine {machine_id} has another customer's open cash order")
    for row in rows:
        cancel_order(db, row["id"], CANCEL_SUPERSEDED)
    return [row["id"] for row in rows]


def _token_matches(stored: str | None, presented: str | None) -> bool:
    return stored is not None and presented is not None and hmac.compare_digest(stored, presented)


def _check_client_limits(db: Db, limits: ClientLimits, units: int) -> None:
    """Refuse an order that would take the client past its open orders or reserved units."""
    if units > limits.max_reserved_units:
        raise OrderTooLarge(
            f"an order may hold at most {limits.max_reserved_units} units; this one has {units}"
        )
    row = db.execute(
        "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM orders "
        "WHERE client = ? AND status = ?",
        [limits.client, OrderStatus.AWAITING_PAYMENT.value],
    ).fetchone()
    if row["n"] == 0:
        return
    reserved = db.execute(
        "SELECT COALESCE(SUM(i.quantity), 0) FROM order_items i JOIN orders o "
        "ON o.id = i.order_id WHERE o.client = ? AND o.status = ?",
        [limits.client, OrderStatus.AWAITING_PAYMENT.value],
    ).fetchone()[0]
    # Waiting helps once the oldest open order has been paid, cancelled or has expired.
    age = (datetime.now(UTC) - datetime.fromisoformat(row["oldest"])).total_seconds()
    retry_after = math.ceil(max(limits.payment_timeout_s - age, 1.0))
    if row["n"] >= limits.max_open_orders:
        raise ClientLimitExceeded(
            "open_orders",
            f"this client already has {row['n']} unpaid orders (at most "
            f"{limits.max_open_orders}): pay or cancel one first",
            retry_after,
        )
    if reserved + units > limits.max_reserved_units:
        raise ClientLimitExceeded(
            "reserved_units",
            f"this client's unpaid orders already hold {reserved} units (at most "
            f"{limits.max_reserved_units} together): pay or cancel one first",
            retry_after,
        )


def machine_credit(db: Db, machine_id: str, currency: str) -> int:
    """Cash received on the machine that no order holds (yet)."""
    received = db.execute(
        "SELECT COALESCE(SUM(amount), 0) FROM cash_credits WHERE machine_id = ? AND currency = ?",
        [machine_id, currency],
    ).fetchone()[0]
    allocated = db.execute(
        "SELECT COALESCE(SUM(a.amount), 0) FROM cash_allocations a "
        "JOIN cash_credits c ON c.id = a.credit_id WHERE c.machine_id = ? AND c.currency = ?",
        [machine_id, currency],
    ).fetchone()[0]
    return int(received) - int(allocated)


def _pay_from_machine_credit(
    db: Db, order_id: str, machine_id: str, currency: str
) -> dict[str, Any]:
    """Allocate free machine credit (oldest first) to the order, never more than it still owes:
    the rest of a credit stays machine credit for the next cash order. Returns the order's
    changes (paid_amount, and status when fully paid); empty when nothing was allocated."""
    order = db.execute(
        "SELECT total_amount, paid_amount FROM orders WHERE id = ?", [order_id]
    ).fetchone()
    paid = order["paid_amount"]
    due = order["total_amount"] - paid
    credits = db.execute(
        "SELECT c.id, c.amount - COALESCE((SELECT SUM(a.amount) FROM cash_allocations a "
        "WHERE a.credit_id = c.id), 0) AS free FROM cash_credits c "
        "WHERE c.machine_id = ? AND c.currency = ? ORDER BY c.received_at, c.id",
        [machine_id, currency],
    ).fetchall()
    allocated = 0
    for credit in credits:
        if allocated >= due:
            break
        take = min(credit["free"], due - allocated)
        if take <= 0:
            continue
        db.execute(
            "INSERT INTO cash_allocations (credit_id, order_id, amount, allocated_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT(credit_id, order_id) "
            "DO UPDATE SET amount = amount + excluded.amount",
            [credit["id"], order_id, take, now_iso()],
        )
        # cash_credits.order_id names the order the credit (first) went to, for the records.
        db.execute(
            "UPDATE cash_credits SET order_id = COALESCE(order_id, ?) WHERE id = ?",
            [order_id, credit["id"]],
        )
        allocated += take
    if allocated == 0:
        return {}
    changes: dict[str, Any] = {"paid_amount": paid + allocated}
    if paid + allocated >= order["total_amount"]:
        changes["status"] = OrderStatus.PAID.value
    return changes


def attach_payment(db: Db, intent: PaymentIntent) -> OrderView:
    db.execute(
        "INSERT OR IGNORE INTO payments (payment_id, order_id, provider, status, amount, "
        "currency, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            intent.payment_id,
            intent.order_id,
            intent.provider,
            intent.status,
            intent.amount,
            intent.currency,
            now_iso(),
        ],
    )
    return touch_order(
        db, intent.order_id, payment_id=intent.payment_id, qr_payload=intent.qr_payload
    )


def _release_stock(db: Db, order: OrderView) -> None:
    for item in order.items:
        open_units = item.quantity - item.dispensed - item.failed - item.unknown
        if open_units > 0:
            db.execute(
                "UPDATE catalog SET reserved = MAX(reserved - ?, 0) WHERE id = ?",
                [open_units, item.catalog_item_id],
            )
        if item.dispense_status is ItemDispenseStatus.PENDING:
            db.execute(
                "UPDATE order_items SET dispense_status = ? WHERE id = ?",
                [ItemDispenseStatus.NOT_DISPENSED.value, item.id],
            )


def cancel_order(db: Db, order_id: str, reason: str = CANCEL_REQUESTED) -> OrderView:
    """Cancel an unpaid order: release its stock and give any partial cash back to the machine
    credit (there is no coin return, so the next cash order uses it)."""
    order = _require_order(db, order_id)
    if order.status is not OrderStatus.AWAITING_PAYMENT:
        raise OrderConflict(f"order is {order.status.value}")
    _release_stock(db, order)
    db.execute("DELETE FROM cash_allocations WHERE order_id = ?", [order_id])
    db.execute("UPDATE cash_credits SET order_id = NULL WHERE order_id = ?", [order_id])
    return touch_order(
        db, order_id, status=OrderStatus.CANCELLED.value, paid_amount=0, cancel_reason=reason
    )


def cancel_order_with_token(db: Db, order_id: str, presented_hash: str | None) -> OrderView:
    """A kiosk API cancel: only the holder of the order's token may cancel it (403 before the
    order's state is looked at, so a token-less caller learns nothing more than a GET shows)."""
    _require_order(db, order_id)
    if presented_hash is None:
        raise OrderTokenRequired(order_id)
    row = db.execute("SELECT token_hash FROM orders WHERE id = ?", [order_id]).fetchone()
    if not _token_matches(row["token_hash"], presented_hash):
        raise OrderTokenInvalid(order_id)
    return cancel_order(db, order_id, CANCEL_REQUESTED)


def expire_orders(db: Db, cutoff: str) -> list[str]:
    rows = db.execute(
        "SELECT id FROM orders WHERE status = ? AND created_at < ?",
        [OrderStatus.AWAITING_PAYMENT.value, cutoff],
    ).fetchall()
    for row in rows:
        cancel_order(db, row["id"], CANCEL_EXPIRED)
    return [row["id"] for row in rows]


def credit_id_taken(db: Db, machine_id: str, credit_id: str) -> bool:
    """Whether ``credit_id`` already names something other than this machine's own credit: a
    credit of another machine, or another event of the gateway (an order snapshot, a command).
    Event ids are global, so such a credit would be taken for a duplicate (acked and forgotten)
    or lose its outbox row to the other event, and a stolen device's key could do that to
    another machine's genuine credit whose id it saw on the LAN."""
    row = db.execute("SELECT machine_id FROM cash_credits WHERE id = ?", [credit_id]).fetchone()
    if row is not None:
        return bool(row["machine_id"] != machine_id)
    for sql in (
        "SELECT 1 FROM outbox WHERE event_id = ?",
        "SELECT 1 FROM dispense_commands WHERE cmd_id = ?",
    ):
        if db.execute(sql, [credit_id]).fetchone() is not None:
            return True
    return False


def record_cash_credit(db: Db, machine_id: str, credit: CashCredit) -> CreditOutcome:
    exists = db.execute("SELECT 1 FROM cash_credits WHERE id = ?", [credit.id]).fetchone()
    if exists is not None:
        return CreditOutcome(duplicate=True, order_id=None)
    # At most one cash order per machine is open (see _supersede_open_cash_order), so this is
    # the order of the customer at the machine; the ORDER BY only keeps older databases sane.
    target = db.execute(
        "SELECT id FROM orders WHERE machine_id = ? AND status = ? "
        "AND payment_method = ? AND currency = ? ORDER BY created_at, id LIMIT 1",
        [
            machine_id,
            OrderStatus.AWAITING_PAYMENT.value,
            PaymentMethod.CASH.value,
            credit.currency,
        ],
    ).fetchone()
    order_id = target["id"] if target is not None else None
    db.execute(
        "INSERT INTO cash_credits (id, machine_id, amount, currency, order_id, received_at) "
        "VALUES (?, ?, ?, ?, NULL, ?)",
        [credit.id, machine_id, credit.amount, credit.currency, now_iso()],
    )
    record = CashCreditRecord(
        credit_id=credit.id,
        machine_id=machine_id,
        amount=credit.amount,
        currency=credit.currency,
        order_id=order_id,
    )
    add_outbox(db, credit.id, "cash.credit", record.model_dump(mode="json"))
    if order_id is not None:
        # Only what the order still owes is applied; the rest stays machine credit.
        changes = _pay_from_machine_credit(db, order_id, machine_id, credit.currency)
        touch_order(db, order_id, **changes)
    return CreditOutcome(duplicate=False, order_id=order_id)


def mark_processed(db: Db, message_id: str, channel: str) -> bool:
    """Record a channel message id; False when it was processed before."""
    cursor = db.execute(
        "INSERT OR IGNORE INTO processed_messages (id, channel, processed_at) VALUES (?, ?, ?)",
        [message_id, channel, now_iso()],
    )
    return cursor.rowcount == 1


def apply_payment_update(db: Db, message_id: str, update: PaymentUpdate) -> str | None:
    """Returns the order id when the order changed."""
    if not mark_processed(db, message_id, "cloud"):
        return None
    payment = db.execute(
        "SELECT status FROM payments WHERE payment_id = ?", [update.payment_id]
    ).fetchone()
    if payment is not None and payment["status"] == update.status:
        return None  # the same outcome arrived under another message id
    db.execute(
        "INSERT INTO payments (payment_id, order_id, provider, status, amount, currency, "
        "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(payment_id) DO UPDATE SET "
        "status = excluded.status, amount = excluded.amount, updated_at = excluded.updated_at",
        [
            update.payment_id,
            update.order_id,
            update.provider,
            update.status,
            update.amount,
            update.currency,
            now_iso(),
        ],
    )
    order = load_order(db, update.order_id)
    if order is None:
        return None
    if update.status == "failed":
        if order.status is OrderStatus.AWAITING_PAYMENT:
            cancel_order(db, order.id, CANCEL_PAYMENT_FAILED)
            return order.id
        return None
    if update.currency != order.currency:
        return None
    if order.status is OrderStatus.AWAITING_PAYMENT:
        paid = update.amount
        changes: dict[str, Any] = {"paid_amount": paid, "payment_id": update.payment_id}
        if paid >= order.total_amount:
            changes["status"] = OrderStatus.PAID.value
        touch_order(db, order.id, **changes)
        return order.id
    if order.status is OrderStatus.CANCELLED:
        # Money arrived after the order expired or was cancelled: nothing will be dispensed, so
        # the customer is owed a refund.
        touch_order(
            db,
            order.id,
            paid_amount=update.amount,
            payment_id=update.payment_id,
            status=OrderStatus.REFUND_PENDING.value,
        )
        return order.id
    return None


# --- dispensing --------------------------------------------------------------------------------


def next_command(db: Db, order_id: str, ttl_s: int) -> PendingCommand | None:
    """The unit to dispense next: an unresolved persisted command (resumed as is) or a newly
    signed one. None when the order needs no more commands."""
    order = _require_order(db, order_id)
    if order.status not in (OrderStatus.PAID, OrderStatus.DISPENSING):
        return None
    for item in order.items:
        for unit in range(item.quantity):
            row = db.execute(
                "SELECT * FROM dispense_commands WHERE order_item_id = ? AND unit = ?",
                [item.id, unit],
            ).fetchone()
            if row is not None:
                if row["result"] is None:
                    return PendingCommand(
                        cmd_id=row["cmd_id"],
                        order_id=order_id,
                        machine_id=row["machine_id"],
                        slot=row["slot"],
                        payload=bytes(row["payload"]),
                        sent_at=datetime.fromisoformat(row["sent_at"]),
                        resumed=True,
                    )
                continue
            return _new_command(db, order, item, unit, ttl_s)
    _finish_order(db, order_id)
    return None


def _new_command(
    db: Db, order: OrderView, item: OrderItemSnapshot, unit: int, ttl_s: int
) -> PendingCommand:
    machine = db.execute(
        "SELECT command_key FROM machines WHERE id = ?", [order.machine_id]
    ).fetchone()
    last = db.execute(
        "SELECT ctr FROM device_counters WHERE machine_id = ?", [order.machine_id]
    ).fetchone()
    # The device keeps the highest counter it accepted and silently refuses anything not above
    # it. A gateway whose database was restored or replaced would count from an old value (or 0)
    # and every dispense would fail until it caught up, so the counter never goes below the
    # wall clock in milliseconds: above anything issued before, even by a lost database (as long
    # as that gateway's clock was not ahead). +1 keeps it strictly increasing within the same
    # millisecond or if the clock steps back. Devices store it as an int, and MicroPython ints
    # are arbitrary precision, so the size is no problem.
    ctr = max((last["ctr"] if last else 0) + 1, time.time_ns() // 1_000_000)
    db.execute(
        "INSERT INTO device_counters (machine_id, ctr) VALUES (?, ?) "
        "ON CONFLICT(machine_id) DO UPDATE SET ctr = excluded.ctr",
        [order.machine_id, ctr],
    )
    now = int(time.time())
    body = DispenseCommandBody(
        cmd_id=new_id(),
        mid=order.machine_id,
        order_id=order.id,
        item_id=item.id,
        slot=item.slot,
        ctr=ctr,
        exp=now + ttl_s,
        ts=now,
    )
    key = sealed.open_command_key(db, order.machine_id, machine["command_key"])
    payload = sign_command(down_key(key), body)
    sent_at = datetime.now(UTC)
    db.execute(
        "INSERT INTO dispense_commands (cmd_id, order_id, order_item_id, unit, machine_id, slot, "
        "ctr, payload, sent_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            body.cmd_id,
            order.id,
            item.id,
            unit,
            order.machine_id,
            item.slot,
            ctr,
            payload,
            sent_at.isoformat(),
        ],
    )
    if item.dispense_status is ItemDispenseStatus.PENDING:
        db.execute(
            "UPDATE order_items SET dispense_status = ? WHERE id = ?",
            [ItemDispenseStatus.DISPENSING.value, item.id],
        )
    if order.status is OrderStatus.PAID or item.dispense_status is ItemDispenseStatus.PENDING:
        touch_order(db, order.id, status=OrderStatus.DISPENSING.value)
    return PendingCommand(
        cmd_id=body.cmd_id,
        order_id=order.id,
        machine_id=order.machine_id,
        slot=item.slot,
        payload=payload,
        sent_at=sent_at,
        resumed=False,
    )


def _item_status(quantity: int, dispensed: int, failed: int, unknown: int) -> ItemDispenseStatus:
    if dispensed + failed + unknown < quantity:
        return ItemDispenseStatus.DISPENSING
    if dispensed == quantity:
        return ItemDispenseStatus.DISPENSED
    if dispensed > 0:
        return ItemDispenseStatus.PARTIAL
    if unknown > 0:
        return ItemDispenseStatus.UNKNOWN
    return ItemDispenseStatus.FAILED


def record_dispense_result(
    db: Db,
    machine_id: str,
    cmd_id: str,
    outcome: DispenseOutcome,
    reason: str | None,
    device_ts: int | None,
) -> ResultOutcome:
    """Apply one unit's outcome; the first outcome recorded for a command is final."""
    cmd = db.execute("SELECT * FROM dispense_commands WHERE cmd_id = ?", [cmd_id]).fetchone()
    if cmd is None or cmd["machine_id"] != machine_id:
        return ResultOutcome(status="unknown_command", order_id=None)
    if cmd["result"] is not None:
        late = cmd["result"] == DispenseOutcome.UNKNOWN.value and cmd["reason"] == NO_RESULT
        if late and outcome is not DispenseOutcome.UNKNOWN and device_ts is not None:
            _correct_timed_out(db, cmd, outcome, reason, device_ts)
            return ResultOutcome(status="corrected", order_id=cmd["order_id"])
        return ResultOutcome(status="duplicate", order_id=cmd["order_id"])
    db.execute(
        "UPDATE dispense_commands SET result = ?, reason = ?, resolved_at = ? WHERE cmd_id = ?",
        [outcome.value, reason, now_iso(), cmd_id],
    )
    column = {"ok": "dispensed", "failed": "failed", "unknown": "unknown"}[outcome.value]
    db.execute(
        f"UPDATE order_items SET {column} = {column} + 1 WHERE id = ?", [cmd["order_item_id"]]
    )
    item = db.execute("SELECT * FROM order_items WHERE id = ?", [cmd["order_item_id"]]).fetchone()
    status = _item_status(item["quantity"], item["dispensed"], item["failed"], item["unknown"])
    db.execute(
        "UPDATE order_items SET dispense_status = ? WHERE id = ?", [status.value, item["id"]]
    )
    # ok: the unit left the machine. unknown: counted as gone too, because selling a unit that
    # may not be there is worse than hiding one that is (a restock count corrects it).
    # failed: the unit is still in the slot, so only the reservation is released.
    gone = outcome is not DispenseOutcome.FAILED
    db.execute(
        "UPDATE catalog SET reserved = MAX(reserved - 1, 0), quantity = MAX(quantity - ?, 0) "
        "WHERE id = ?",
        [1 if gone else 0, item["catalog_item_id"]],
    )
    record = DispenseRecord(
        cmd_id=cmd_id,
        machine_id=machine_id,
        order_id=cmd["order_id"],
        item_id=cmd["order_item_id"],
        slot=cmd["slot"],
        result=outcome.value,
        reason=reason,
        device_ts=device_ts,
    )
    add_outbox(db, cmd_id, "dispense.result", record.model_dump(mode="json"))
    if gone:
        inventory_event(db, item["catalog_item_id"], -1, "sale")
    touch_order(db, cmd["order_id"])
    _finish_order(db, cmd["order_id"])
    return ResultOutcome(status="applied", order_id=cmd["order_id"])


def _correct_timed_out(
    db: Db, cmd: Any, outcome: DispenseOutcome, reason: str | None, device_ts: int
) -> None:
    """The device answered after the gateway gave up and recorded ``unknown``: the device knows
    better, so the counts and the stock follow its answer (the motor still ran at most once)."""
    db.execute(
        "UPDATE dispense_commands SET result = ?, reason = ?, resolved_at = ? WHERE cmd_id = ?",
        [outcome.value, reason, now_iso(), cmd["cmd_id"]],
    )
    column = "dispensed" if outcome is DispenseOutcome.OK else "failed"
    db.execute(
        f"UPDATE order_items SET unknown = unknown - 1, {column} = {column} + 1 WHERE id = ?",
        [cmd["order_item_id"]],
    )
    item = db.execute("SELECT * FROM order_items WHERE id = ?", [cmd["order_item_id"]]).fetchone()
    status = _item_status(item["quantity"], item["dispensed"], item["failed"], item["unknown"])
    db.execute(
        "UPDATE order_items SET dispense_status = ? WHERE id = ?", [status.value, item["id"]]
    )
    if outcome is DispenseOutcome.FAILED:
        # Counted as gone at the timeout, but it never left the slot.
        db.execute(
            "UPDATE catalog SET quantity = quantity + 1 WHERE id = ?", [item["catalog_item_id"]]
        )
        inventory_event(db, item["catalog_item_id"], 1, "device_report")
    record = DispenseRecord(
        cmd_id=cmd["cmd_id"],
        machine_id=cmd["machine_id"],
        order_id=cmd["order_id"],
        item_id=cmd["order_item_id"],
        slot=cmd["slot"],
        result=outcome.value,
        reason=reason,
        device_ts=device_ts,
    )
    add_outbox(db, f"{cmd['cmd_id']}-late", "dispense.result", record.model_dump(mode="json"))
    order = _require_order(db, cmd["order_id"])
    changes: dict[str, Any] = {}
    if order.status is OrderStatus.REFUND_PENDING and all(
        i.dispensed == i.quantity for i in order.items
    ):
        changes["status"] = OrderStatus.COMPLETED.value
    touch_order(db, order.id, **changes)


def _finish_order(db: Db, order_id: str) -> None:
    order = _require_order(db, order_id)
    if order.status in TERMINAL_ORDER_STATUSES:
        return
    if order.status not in (OrderStatus.PAID, OrderStatus.DISPENSING):
        return
    if any(i.dispensed + i.failed + i.unknown < i.quantity for i in order.items):
        return
    all_ok = all(i.dispensed == i.quantity for i in order.items)
    status = OrderStatus.COMPLETED if all_ok else OrderStatus.REFUND_PENDING
    touch_order(db, order_id, status=status.value)


def device_result(db: Db, machine_id: str, result: DispenseResult) -> ResultOutcome:
    return record_dispense_result(
        db, machine_id, result.cmd_id, result.result, result.reason, result.ts
    )
