"""Transactions on orders, stock, payments and device events.

Every function here runs inside the writer thread's transaction, and every change of an order
writes its outbox events in that same transaction (the outbox pattern): the cloud learns about
exactly the changes that were committed, never about one that was rolled back.
"""

import hmac
import json
import logging
import math
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import sqlite_utils

from contracts.device_messages import CashCredit, DispenseResult
from contracts.orders import (
    ELECTRONIC_METHODS,
    TERMINAL_ORDER_STATUSES,
    CreditReason,
    DispenseOutcome,
    ItemDispenseStatus,
    OrderStatus,
    PaymentMethod,
    RefundReason,
    RefundStatus,
)
from contracts.signing import DispenseCommandBody, down_key, sign_command
from contracts.sync import (
    CashCreditRecord,
    CreditEntry,
    DispenseRecord,
    InventoryChange,
    MoneyPolicy,
    OrderItemSnapshot,
    PaymentIntent,
    PaymentUpdate,
    RefundRequest,
    RefundUpdate,
    SlotStateRecord,
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
    SlotDisabled,
)
from edge.store import dead_letters, sealed
from edge.store.views import (
    ClientLimits,
    CreditOutcome,
    NewOrder,
    OrderCapability,
    OrderView,
    PaymentView,
    PendingCommand,
    RefundView,
    ResultOutcome,
)

log = logging.getLogger(__name__)

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
    payment = _payment_view(db, row) if row["payment_id"] else None
    refunds = [
        RefundView(
            refund_id=r["refund_id"],
            amount=r["amount"],
            status=RefundStatus(r["status"]),
            reason=RefundReason(r["reason"]),
        )
        for r in db.execute(
            "SELECT refund_id, amount, status, reason FROM refunds WHERE order_id = ? "
            "ORDER BY created_at, refund_id",
            [order_id],
        ).fetchall()
    ]
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
        refund_amount=row["refund_amount"],
        credit_amount=row["credit_amount"],
        overpaid_amount=row["overpaid_amount"],
        cancel_credit_amount=_cancel_credit(db, row),
        refunds=refunds,
        machine_credit=machine_credit(db, row["machine_id"], row["currency"]),
    )


def _cancel_credit(db: Db, row: Any) -> int:
    if row["status"] != OrderStatus.CANCELLED.value:
        return 0
    released = db.execute(
        "SELECT COALESCE(SUM(delta), 0) FROM credit_entries WHERE order_id = ? AND reason = ?",
        [row["id"], CreditReason.ORDER_CANCELLED.value],
    ).fetchone()[0]
    return int(released)


def _payment_view(db: Db, row: Any) -> PaymentView:
    payment = db.execute(
        "SELECT provider, status FROM payments WHERE payment_id = ?", [row["payment_id"]]
    ).fetchone()
    status = payment["status"] if payment is not None else "created"
    return PaymentView(
        payment_id=row["payment_id"],
        provider=row["payment_provider"] or (payment and payment["provider"]) or "sandbox",
        status=status if status in ("created", "captured", "failed") else "created",
        qr_code_id=row["qr_code_id"],
        upi_uri=row["upi_uri"],
        image_url=row["image_url"],
        qr_payload=row["qr_payload"],
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
        if not row["enabled"]:
            raise SlotDisabled(row["id"], row["slot"], row["disabled_reason"])
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

    # Plain INSERTs: sqlite-utils' insert looked the table up in sqlite_master on every call.
    _insert(
        db,
        "orders",
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
        },
    )
    for item in items:
        _insert(db, "order_items", item)
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
        changes, _ = _pay_from_machine_credit(db, order_id, order.machine_id, machine["currency"])
    return touch_order(db, order_id, **changes), True, superseded


def _insert(db: Db, table: str, row: dict[str, Any]) -> None:
    columns = ", ".join(row)
    marks = ", ".join("?" * len(row))
    db.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", list(row.values()))


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
    """Cash received on the machine that no order holds (yet).

    An allocation's ``returned`` part is held by no order: the units it paid did not come out,
    so it went back to the machine credit (the allocation itself stays as the record of which
    cash paid the order)."""
    received = db.execute(
        "SELECT COALESCE(SUM(amount), 0) FROM cash_credits WHERE machine_id = ? AND currency = ?",
        [machine_id, currency],
    ).fetchone()[0]
    held = db.execute(
        "SELECT COALESCE(SUM(a.amount - a.returned), 0) FROM cash_allocations a "
        "JOIN cash_credits c ON c.id = a.credit_id WHERE c.machine_id = ? AND c.currency = ?",
        [machine_id, currency],
    ).fetchone()[0]
    return int(received) - int(held)


def credit_entry(
    db: Db,
    machine_id: str,
    currency: str,
    delta: int,
    reason: CreditReason,
    *,
    order_id: str | None = None,
    credit_id: str | None = None,
    entry_id: str | None = None,
) -> None:
    """Record one move of the machine's free credit (already made in this transaction) with
    the balance after it, locally and as a ``credit.entry`` outbox event. ``entry_id`` is
    deterministic where the move could be decided twice (it is then recorded once)."""
    if delta == 0:
        return
    entry_id = entry_id or f"ce-{new_id()}"
    if db.execute("SELECT 1 FROM credit_entries WHERE entry_id = ?", [entry_id]).fetchone():
        return
    entry = CreditEntry(
        entry_id=entry_id,
        machine_id=machine_id,
        currency=currency,
        delta=delta,
        balance=machine_credit(db, machine_id, currency),
        reason=reason,
        order_id=order_id,
        credit_id=credit_id,
    )
    db.execute(
        "INSERT INTO credit_entries (entry_id, machine_id, currency, delta, balance, reason, "
        "order_id, credit_id, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            entry.entry_id,
            machine_id,
            currency,
            delta,
            entry.balance,
            reason.value,
            order_id,
            credit_id,
            now_iso(),
        ],
    )
    add_outbox(db, entry_id, "credit.entry", entry.model_dump(mode="json"))


def _pay_from_machine_credit(
    db: Db, order_id: str, machine_id: str, currency: str
) -> tuple[dict[str, Any], dict[str, int]]:
    """Allocate free machine credit (oldest first) to the order, never more than it still owes:
    the rest of a credit stays machine credit for the next cash order. Returns the order's
    changes (paid_amount, and status when fully paid; empty when nothing was allocated) and
    how much was taken from which credit."""
    order = db.execute(
        "SELECT total_amount, paid_amount FROM orders WHERE id = ?", [order_id]
    ).fetchone()
    paid = order["paid_amount"]
    due = order["total_amount"] - paid
    credits = db.execute(
        "SELECT c.id, c.amount - COALESCE((SELECT SUM(a.amount - a.returned) "
        "FROM cash_allocations a WHERE a.credit_id = c.id), 0) AS free FROM cash_credits c "
        "WHERE c.machine_id = ? AND c.currency = ? ORDER BY c.received_at, c.id",
        [machine_id, currency],
    ).fetchall()
    allocated = 0
    taken: dict[str, int] = {}
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
        taken[credit["id"]] = take
    if allocated == 0:
        return {}, taken
    credit_entry(
        db, machine_id, currency, -allocated, CreditReason.ORDER_PAYMENT, order_id=order_id
    )
    changes: dict[str, Any] = {"paid_amount": paid + allocated}
    if paid + allocated >= order["total_amount"]:
        changes["status"] = OrderStatus.PAID.value
    return changes, taken


def attach_payment(db: Db, intent: PaymentIntent) -> OrderView:
    """Record the cloud's payment intent on the order: what the kiosk shows to pay it."""
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
    payload = intent.qr_payload
    return touch_order(
        db,
        intent.order_id,
        payment_id=intent.payment_id,
        qr_payload=payload,
        payment_provider=intent.provider,
        qr_code_id=intent.provider_ref,
        # The kiosk opens a UPI app with the URI; anything else is only drawn as a QR code.
        upi_uri=payload if payload and payload[:4].lower() == "upi:" else None,
        image_url=intent.image_url,
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
    held = db.execute(
        "SELECT COALESCE(SUM(amount - returned), 0) FROM cash_allocations WHERE order_id = ?",
        [order_id],
    ).fetchone()[0]
    db.execute("DELETE FROM cash_allocations WHERE order_id = ?", [order_id])
    db.execute("UPDATE cash_credits SET order_id = NULL WHERE order_id = ?", [order_id])
    credit_entry(
        db,
        order.machine_id,
        order.currency,
        int(held),
        CreditReason.ORDER_CANCELLED,
        order_id=order_id,
    )
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
    credit_entry(
        db,
        machine_id,
        credit.currency,
        credit.amount,
        CreditReason.CASH_IN,
        order_id=order_id,
        credit_id=credit.id,
    )
    if order_id is not None:
        # Only what the order still owes is applied; the rest stays machine credit.
        changes, taken = _pay_from_machine_credit(db, order_id, machine_id, credit.currency)
        if changes.get("status") == OrderStatus.PAID.value:
            # The coin that paid the order brought more than it still owed: the rest is
            # machine credit, and the order says so (the kiosk tells the customer).
            rest = credit.amount - taken.get(credit.id, 0)
            if rest > 0:
                current = db.execute(
                    "SELECT overpaid_amount FROM orders WHERE id = ?", [order_id]
                ).fetchone()[0]
                changes["overpaid_amount"] = int(current) + rest
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
    """Apply a payment confirmation from the cloud; returns the order id when the order changed.

    One the gateway cannot apply (no such order here, another machine's, a cash order, another
    payment than the order's, a currency or amount that is not the order's) becomes a payment
    dead letter with the reason: the money is real, so it must be seen, but guessing what it
    was for could dispense or refund the wrong thing. The cloud's reconciliation report lists
    the same payment from its side."""
    if not mark_processed(db, message_id, "cloud"):
        return None
    order = load_order(db, update.order_id)
    problem = _payment_problem(order, update)
    if problem is not None:
        code, error = problem
        dead_letters.record_payment(
            db, message_id, update.model_dump_json(), code=code, error=error
        )
        log.warning(
            "payment %s (%s %d %s for order %s) not applied, kept as a dead letter: %s",
            update.payment_id,
            update.status,
            update.amount,
            update.currency,
            update.order_id,
            error,
        )
        return None
    assert order is not None  # _payment_problem names a missing order
    payment = db.execute(
        "SELECT status FROM payments WHERE payment_id = ?", [update.payment_id]
    ).fetchone()
    if payment is not None and payment["status"] == update.status:
        return None  # the same outcome arrived under another message id
    db.execute(
        "INSERT INTO payments (payment_id, order_id, provider, status, amount, currency, "
        "updated_at, provider_payment_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(payment_id) DO UPDATE SET status = excluded.status, "
        "amount = excluded.amount, updated_at = excluded.updated_at, "
        "provider_payment_id = COALESCE(excluded.provider_payment_id, provider_payment_id)",
        [
            update.payment_id,
            update.order_id,
            update.provider,
            update.status,
            update.amount,
            update.currency,
            now_iso(),
            update.provider_payment_id,
        ],
    )
    if update.status == "failed":
        if order.status is OrderStatus.AWAITING_PAYMENT:
            cancel_order(db, order.id, CANCEL_PAYMENT_FAILED)
            return order.id
        # Failed after a capture (or on a cancelled order) moves no money: keep the row only.
        return order.id if order.payment is not None else None
    if order.status is OrderStatus.AWAITING_PAYMENT:
        touch_order(
            db,
            order.id,
            paid_amount=update.amount,
            payment_id=update.payment_id,
            status=OrderStatus.PAID.value,
        )
        return order.id
    if order.status is OrderStatus.CANCELLED:
        # Money arrived after the order expired or was cancelled: nothing will be dispensed,
        # so all of it goes back. The order stays cancelled (no unit was ever dispensed); the
        # refund id is the one the cloud uses when it decides the same, so it is made once.
        _request_refund(
            db,
            order,
            refund_id=f"rf-{update.payment_id}-unserved",
            payment_id=update.payment_id,
            amount=update.amount,
            reason=RefundReason.UNSERVED,
        )
        touch_order(
            db,
            order.id,
            paid_amount=update.amount,
            payment_id=update.payment_id,
            refund_amount=_gateway_refund_total(db, order.id),
        )
        return order.id
    return None


def _payment_problem(order: OrderView | None, update: PaymentUpdate) -> tuple[str, str] | None:
    """Why ``update`` cannot be applied to ``order`` (a dead-letter code and message), or None."""
    if order is None:
        return "unknown_order", f"no order {update.order_id} at this gateway"
    if order.machine_id != update.machine_id:
        return (
            "machine_mismatch",
            f"order {order.id} is for machine {order.machine_id}, the payment names "
            f"{update.machine_id}",
        )
    if order.payment_method not in ELECTRONIC_METHODS:
        return "not_electronic", f"order {order.id} is paid in {order.payment_method.value}"
    if order.payment is not None and order.payment.payment_id != update.payment_id:
        return (
            "other_payment",
            f"order {order.id} is paid by payment {order.payment.payment_id}, not "
            f"{update.payment_id} (a second payment is refunded by the cloud as a duplicate)",
        )
    if update.status == "captured":
        if update.currency != order.currency:
            return (
                "currency_mismatch",
                f"captured {update.amount} {update.currency}, the order is in {order.currency}",
            )
        if update.amount != order.total_amount:
            return (
                "amount_mismatch",
                f"captured {update.amount} {update.currency}, the order's total is "
                f"{order.total_amount}: nothing dispensed, no refund made here",
            )
    return None


# --- refunds -----------------------------------------------------------------------------------

# Refunds the gateway decides for its own orders; the cloud's own (duplicate, unmatched) are
# shown with the order when it reports them but are not the order's refund_amount.
_GATEWAY_REFUND_REASONS = (RefundReason.UNDISPENSED.value, RefundReason.UNSERVED.value)
_FINAL_REFUND_STATUSES = frozenset({RefundStatus.REFUNDED.value, RefundStatus.VOIDED.value})


def _request_refund(
    db: Db,
    order: OrderView,
    *,
    refund_id: str,
    payment_id: str,
    amount: int,
    reason: RefundReason,
    hold: bool = False,
) -> None:
    """Decide a refund: a local row (what the kiosk shows) and a ``refund.request`` event, in
    the caller's transaction. The id is deterministic, so deciding it again (a replay, a
    restart, the cloud deciding the same) changes nothing."""
    request = RefundRequest(
        refund_id=refund_id,
        order_id=order.id,
        machine_id=order.machine_id,
        payment_id=payment_id,
        amount=amount,
        currency=order.currency,
        reason=reason,
        hold=hold,
    )
    status = RefundStatus.MANUAL_REVIEW if hold else RefundStatus.PENDING
    now = now_iso()
    db.execute(
        "INSERT INTO refunds (refund_id, order_id, payment_id, amount, currency, reason, hold, "
        "status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(refund_id) DO NOTHING",
        [
            refund_id,
            order.id,
            payment_id,
            amount,
            order.currency,
            reason.value,
            int(hold),
            status.value,
            now,
            now,
        ],
    )
    add_outbox(db, refund_id, "refund.request", request.model_dump(mode="json"))


def _gateway_refund_total(db: Db, order_id: str) -> int:
    marks = ",".join("?" for _ in _GATEWAY_REFUND_REASONS)
    row = db.execute(
        f"SELECT COALESCE(SUM(amount), 0) FROM refunds WHERE order_id = ? AND reason IN ({marks})",
        [order_id, *_GATEWAY_REFUND_REASONS],
    ).fetchone()
    return int(row[0])


def _reason_of(refund_id: str) -> RefundReason:
    for reason in RefundReason:
        if refund_id.endswith(f"-{reason.value}"):
            return reason
    if refund_id.endswith("-held"):
        return RefundReason.UNDISPENSED
    return RefundReason.UNMATCHED


def apply_refund_update(db: Db, message_id: str, update: RefundUpdate) -> str | None:
    """Record where a refund stands at the provider (the cloud's ``refund.update``); returns
    the order id when what the order shows changed.

    ``refunded`` and ``voided`` are final: a late or replayed message never moves a refund
    back from them. Between the other states the newest message wins, because an operator's
    retry legitimately moves ``manual_review`` back to ``pending``. A refund the cloud decided
    itself (a payment on a cancelled order, a duplicate) is added to the order's list when the
    order is here."""
    if not mark_processed(db, message_id, "cloud"):
        return None
    row = db.execute(
        "SELECT status, order_id FROM refunds WHERE refund_id = ?", [update.refund_id]
    ).fetchone()
    now = now_iso()
    if row is None:
        order = db.execute("SELECT id FROM orders WHERE id = ? ", [update.order_id]).fetchone()
        if order is None:
            log.info("refund %s is for order %s, not at this gateway", update.refund_id,
                     update.order_id)  # fmt: skip
            return None
        db.execute(
            "INSERT INTO refunds (refund_id, order_id, payment_id, amount, currency, reason, "
            "hold, status, provider_refund_id, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?)",
            [
                update.refund_id,
                update.order_id,
                update.payment_id,
                update.amount,
                update.currency,
                _reason_of(update.refund_id).value,
                update.status.value,
                update.provider_refund_id,
                now,
                now,
            ],
        )
        return update.order_id
    if row["status"] in _FINAL_REFUND_STATUSES or row["status"] == update.status.value:
        return None
    db.execute(
        "UPDATE refunds SET status = ?, provider_refund_id = COALESCE(?, provider_refund_id), "
        "updated_at = ? WHERE refund_id = ?",
        [update.status.value, update.provider_refund_id, now, update.refund_id],
    )
    return str(row["order_id"])


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
    _count_slot_outcome(db, item["catalog_item_id"], outcome)
    touch_order(db, cmd["order_id"])
    _finish_order(db, cmd["order_id"])
    return ResultOutcome(status="applied", order_id=cmd["order_id"])


# --- slots -------------------------------------------------------------------------------------

SLOT_JAMMED = "jammed"
SLOT_OPERATOR = "operator"
SLOT_TECHNICIAN = "technician"


def _count_slot_outcome(db: Db, catalog_id: str, outcome: DispenseOutcome) -> None:
    """Failed dispenses in a row per slot: ``ok`` starts the count again, ``unknown`` (a power
    cut, a lost answer) says nothing about the slot and leaves it. At the tenant's threshold
    the slot is switched off, so no more customers pay for units it cannot deliver."""
    if outcome is DispenseOutcome.OK:
        db.execute("UPDATE catalog SET consecutive_failures = 0 WHERE id = ?", [catalog_id])
        return
    if outcome is not DispenseOutcome.FAILED:
        return
    db.execute(
        "UPDATE catalog SET consecutive_failures = consecutive_failures + 1 WHERE id = ?",
        [catalog_id],
    )
    row = db.execute(
        "SELECT machine_id, enabled, consecutive_failures FROM catalog WHERE id = ?", [catalog_id]
    ).fetchone()
    limit = money_policy(db, row["machine_id"]).disable_slot_after_failures
    if row["enabled"] and row["consecutive_failures"] >= limit:
        set_slot_enabled(db, catalog_id, enabled=False, reason=SLOT_JAMMED)


def set_slot_enabled(
    db: Db, catalog_id: str, *, enabled: bool, reason: str, enable_rev: int | None = None
) -> bool:
    """Switch a slot on or off and write its ``slot.state`` event; False (and no event) when
    it already was so. Enabling starts the failure count again. ``enable_rev``: the cloud's
    revision this answers (stored, so the same revision is not adopted twice)."""
    row = db.execute(
        "SELECT machine_id, slot, enabled, enable_rev, consecutive_failures FROM catalog "
        "WHERE id = ?",
        [catalog_id],
    ).fetchone()
    if row is None:
        raise CatalogItemNotFound(catalog_id)
    rev = row["enable_rev"] if enable_rev is None else enable_rev
    if bool(row["enabled"]) == enabled:
        if rev != row["enable_rev"]:
            db.execute("UPDATE catalog SET enable_rev = ? WHERE id = ?", [rev, catalog_id])
        return False
    failures = 0 if enabled else int(row["consecutive_failures"])
    db.execute(
        "UPDATE catalog SET enabled = ?, disabled_reason = ?, consecutive_failures = ?, "
        "enable_rev = ? WHERE id = ?",
        [int(enabled), None if enabled else reason, failures, rev, catalog_id],
    )
    record = SlotStateRecord(
        machine_id=row["machine_id"],
        catalog_item_id=catalog_id,
        slot=row["slot"],
        enabled=enabled,
        reason=reason,  # type: ignore[arg-type]
        consecutive_failures=failures,
        enable_rev=rev,
    )
    add_outbox(db, f"ss-{new_id()}", "slot.state", record.model_dump(mode="json"))
    if enabled:
        log.info("slot %s of machine %s enabled (%s)", row["slot"], row["machine_id"], reason)
    else:
        log.warning(
            "slot %s of machine %s disabled (%s) after %d failed dispenses in a row",
            row["slot"],
            row["machine_id"],
            reason,
            failures,
        )
    return True


def _correct_timed_out(
    db: Db, cmd: Any, outcome: DispenseOutcome, reason: str | None, device_ts: int
) -> None:
    """The device answered after the gateway gave up and recorded ``unknown``: the device knows
    better, so the counts and the stock follow its answer (the motor still ran at most once).
    The slot's failure count is left alone: the answer is about a past dispense, and the ones
    after it have been counted already."""
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
    if order.status is OrderStatus.REFUND_PENDING:
        # Legacy orders (before refunds): the old rule.
        if all(i.dispensed == i.quantity for i in order.items):
            changes["status"] = OrderStatus.COMPLETED.value
    elif order.status in (OrderStatus.PARTIALLY_COMPLETED, OrderStatus.FAILED):
        # The order had ended with this unit unknown. Its status follows what came out; its
        # money follows _late_money: no money is made up and none is given back twice.
        changes["status"] = _outcome_status(order).value
        changes |= _late_money(db, order, cmd, item["unit_price"], outcome)
    touch_order(db, order.id, **changes)


def _late_money(
    db: Db, order: OrderView, cmd: Any, unit_price: int, outcome: DispenseOutcome
) -> dict[str, Any]:
    """The money side of a late device answer for a unit the order had ended with as unknown.

    What was decided at the end stands: a refund requested for the unit (policy ``refund``)
    cannot be taken back (the provider may have paid it already), and machine credit given for
    it may already be spent, so a late ``ok`` only logs the loss for the operator. A late
    ``failed`` confirms what was decided. The one case that moves money is a cash unit whose
    credit was held back (policy ``review``) and that the device now says did not come out: it
    is owed, so it is credited now, once (the command is marked ``credited``). An electronic
    held refund stays with the operator, who retries or voids it with this answer in the log."""
    settled = cmd["money"]
    who = f"unit {cmd['cmd_id']} of order {order.id}"
    if outcome is DispenseOutcome.OK:
        if settled in ("refunded", "credited"):
            log.warning(
                "%s came out after the gateway gave its money back (%s, %d %s): the refund or "
                "credit stands; the customer got the item and the money",
                who, settled, unit_price, order.currency,
            )  # fmt: skip
        elif settled == "held":
            log.warning(
                "%s came out: its held refund (%d %s) is not owed; an operator should void it",
                who, unit_price, order.currency,
            )  # fmt: skip
        return {}
    if settled != "held":
        return {}
    if order.payment_method in ELECTRONIC_METHODS:
        log.warning(
            "%s did not come out: its held refund (%d %s) is owed; an operator should retry it",
            who, unit_price, order.currency,
        )  # fmt: skip
        return {}
    returned = _return_cash(db, order, unit_price, entry_id=f"ce-{cmd['cmd_id']}-late")
    db.execute("UPDATE dispense_commands SET money = 'credited' WHERE cmd_id = ?", [cmd["cmd_id"]])
    return {"credit_amount": order.credit_amount + returned}


def _outcome_status(order: OrderView) -> OrderStatus:
    """Every unit has an outcome: what came out names the order's end."""
    dispensed = sum(i.dispensed for i in order.items)
    if dispensed == sum(i.quantity for i in order.items):
        return OrderStatus.COMPLETED
    if dispensed > 0:
        return OrderStatus.PARTIALLY_COMPLETED
    return OrderStatus.FAILED


def _finish_order(db: Db, order_id: str) -> None:
    order = _require_order(db, order_id)
    if order.status in TERMINAL_ORDER_STATUSES:
        return
    if order.status not in (OrderStatus.PAID, OrderStatus.DISPENSING):
        return
    if any(i.dispensed + i.failed + i.unknown < i.quantity for i in order.items):
        return
    status = _outcome_status(order)
    changes: dict[str, Any] = {"status": status.value}
    if status is not OrderStatus.COMPLETED:
        # In the same transaction as the status: an order never ends without its money
        # decided (refund requested, or cash back to the machine credit).
        changes |= _settle_undispensed(db, order)
    touch_order(db, order_id, **changes)


def _settle_undispensed(db: Db, order: OrderView) -> dict[str, Any]:
    """Give back the value of the units that did not come out: failed units, and units whose
    outcome is unknown when the tenant's policy says ``refund`` (under ``review`` they are held
    for an operator). Electronic money is refunded (``refund.request``), cash goes back to the
    machine credit. Each unit's command is marked with what was done, for late answers."""
    policy = money_policy(db, order.machine_id)
    prices = {item.id: item.unit_price for item in order.items}
    owed: list[tuple[str, int]] = []
    held: list[tuple[str, int]] = []
    for cmd in db.execute(
        "SELECT cmd_id, order_item_id, result FROM dispense_commands "
        "WHERE order_id = ? AND result IN (?, ?) AND money IS NULL ORDER BY ctr",
        [order.id, DispenseOutcome.FAILED.value, DispenseOutcome.UNKNOWN.value],
    ).fetchall():
        unit = (cmd["cmd_id"], prices[cmd["order_item_id"]])
        if cmd["result"] == DispenseOutcome.FAILED.value or policy.unknown_outcome == "refund":
            owed.append(unit)
        else:
            held.append(unit)
    owed_amount = sum(price for _, price in owed)
    held_amount = sum(price for _, price in held)
    # Never more than the order took in (a defence: paid_amount is the total for a paid order).
    owed_amount = min(owed_amount, order.paid_amount)
    held_amount = min(held_amount, order.paid_amount - owed_amount)
    changes: dict[str, Any] = {}
    if order.payment_method in ELECTRONIC_METHODS:
        if order.payment is None:
            log.error("order %s ended with undispensed units but has no payment id", order.id)
            return {}
        for amount, suffix, hold, mark, units in (
            (owed_amount, "undispensed", False, "refunded", owed),
            (held_amount, "held", True, "held", held),
        ):
            if amount <= 0:
                continue
            _request_refund(
                db,
                order,
                refund_id=f"rf-{order.id}-{suffix}",
                payment_id=order.payment.payment_id,
                amount=amount,
                reason=RefundReason.UNDISPENSED,
                hold=hold,
            )
            _mark_units(db, units, mark)
        changes["refund_amount"] = _gateway_refund_total(db, order.id)
        return changes
    if owed_amount > 0:
        returned = _return_cash(db, order, owed_amount, entry_id=f"ce-{order.id}-undispensed")
        _mark_units(db, owed, "credited")
        changes["credit_amount"] = order.credit_amount + returned
    if held:
        _mark_units(db, held, "held")
        log.warning(
            "order %s: %d %s of cash for units with unknown outcome held for review (policy), "
            "not credited",
            order.id, held_amount, order.currency,
        )  # fmt: skip
    return changes


def _mark_units(db: Db, units: list[tuple[str, int]], money: str) -> None:
    for cmd_id, _ in units:
        db.execute("UPDATE dispense_commands SET money = ? WHERE cmd_id = ?", [money, cmd_id])


def _return_cash(db: Db, order: OrderView, amount: int, *, entry_id: str) -> int:
    """Give ``amount`` of a cash order's payment back to the machine credit: its allocations
    stay (they record which cash paid it) and their ``returned`` part grows, newest first, so
    ``machine_credit`` counts it free again. Returns what was returned (at most what the
    allocations still hold)."""
    left = amount
    for row in db.execute(
        "SELECT credit_id, amount - returned AS held FROM cash_allocations WHERE order_id = ? "
        "AND amount > returned ORDER BY allocated_at DESC, credit_id DESC",
        [order.id],
    ).fetchall():
        if left <= 0:
            break
        take = min(int(row["held"]), left)
        db.execute(
            "UPDATE cash_allocations SET returned = returned + ? WHERE credit_id = ? "
            "AND order_id = ?",
            [take, row["credit_id"], order.id],
        )
        left -= take
    returned = amount - left
    credit_entry(
        db,
        order.machine_id,
        order.currency,
        returned,
        CreditReason.UNDISPENSED,
        order_id=order.id,
        entry_id=entry_id,
    )
    return returned


def device_result(db: Db, machine_id: str, result: DispenseResult) -> ResultOutcome:
    return record_dispense_result(
        db, machine_id, result.cmd_id, result.result, result.reason, result.ts
    )
