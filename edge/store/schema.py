"""Schema of the gateway database, as sqlite-utils migrations (applied in order, once each)."""

import json
import uuid
from datetime import UTC, datetime

import sqlite_utils

from edge.store import sealed

migrations = sqlite_utils.Migrations("vending-gateway")


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    statements = [
        """CREATE TABLE machines (
            id TEXT PRIMARY KEY, tenant_id TEXT, site_id TEXT, name TEXT NOT NULL,
            location TEXT, status TEXT NOT NULL, mqtt_secret_hash TEXT NOT NULL,
            command_key TEXT NOT NULL, currency TEXT NOT NULL, config TEXT NOT NULL DEFAULT '{}',
            version INTEGER NOT NULL DEFAULT 0, online INTEGER NOT NULL DEFAULT 0,
            fw TEXT, last_seen TEXT)""",
        """CREATE TABLE catalog (
            id TEXT PRIMARY KEY, machine_id TEXT NOT NULL REFERENCES machines(id),
            slot TEXT NOT NULL, name TEXT NOT NULL, category TEXT, price INTEGER NOT NULL,
            currency TEXT NOT NULL, quantity INTEGER NOT NULL, reserved INTEGER NOT NULL DEFAULT 0,
            stock_rev INTEGER NOT NULL DEFAULT 0, capacity INTEGER, image_url TEXT,
            active INTEGER NOT NULL DEFAULT 1,
            CHECK (reserved >= 0))""",
        "CREATE INDEX catalog_machine ON catalog(machine_id)",
        """CREATE TABLE orders (
            id TEXT PRIMARY KEY, machine_id TEXT NOT NULL REFERENCES machines(id),
            status TEXT NOT NULL, payment_method TEXT NOT NULL, total_amount INTEGER NOT NULL,
            paid_amount INTEGER NOT NULL DEFAULT 0, currency TEXT NOT NULL, payment_id TEXT,
            qr_payload TEXT, customer_name TEXT, customer_phone TEXT,
            created_at TEXT NOT NULL, updated_at TEXT NOT NULL, version INTEGER NOT NULL)""",
        "CREATE INDEX orders_status ON orders(status, machine_id, created_at)",
        """CREATE TABLE order_items (
            id TEXT PRIMARY KEY, order_id TEXT NOT NULL REFERENCES orders(id),
            position INTEGER NOT NULL, catalog_item_id TEXT NOT NULL, slot TEXT NOT NULL,
            name TEXT NOT NULL, unit_price INTEGER NOT NULL, quantity INTEGER NOT NULL,
            dispensed INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,
            unknown INTEGER NOT NULL DEFAULT 0, dispense_status TEXT NOT NULL)""",
        "CREATE INDEX order_items_order ON order_items(order_id)",
        """CREATE TABLE dispense_commands (
            cmd_id TEXT PRIMARY KEY, order_id TEXT NOT NULL, order_item_id TEXT NOT NULL,
            unit INTEGER NOT NULL, machine_id TEXT NOT NULL, slot TEXT NOT NULL,
            ctr INTEGER NOT NULL, payload BLOB NOT NULL, sent_at TEXT NOT NULL,
            result TEXT, reason TEXT, resolved_at TEXT,
            UNIQUE (order_item_id, unit))""",
        """CREATE TABLE device_counters (
            machine_id TEXT PRIMARY KEY, ctr INTEGER NOT NULL)""",
        """CREATE TABLE cash_credits (
            id TEXT PRIMARY KEY, machine_id TEXT NOT NULL, amount INTEGER NOT NULL,
            currency TEXT NOT NULL, order_id TEXT, received_at TEXT NOT NULL)""",
        "CREATE INDEX cash_credits_free ON cash_credits(machine_id, order_id)",
        """CREATE TABLE payments (
            payment_id TEXT PRIMARY KEY, order_id TEXT NOT NULL, provider TEXT,
            status TEXT NOT NULL, amount INTEGER NOT NULL, currency TEXT NOT NULL,
            updated_at TEXT NOT NULL)""",
        """CREATE TABLE processed_messages (
            id TEXT PRIMARY KEY, channel TEXT NOT NULL, processed_at TEXT NOT NULL)""",
        """CREATE TABLE idempotency_keys (
            key TEXT PRIMARY KEY, request_hash TEXT NOT NULL, order_id TEXT NOT NULL,
            created_at TEXT NOT NULL)""",
        """CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
            type TEXT NOT NULL, payload TEXT NOT NULL, occurred_at TEXT NOT NULL,
            sent INTEGER NOT NULL DEFAULT 0)""",
        "CREATE INDEX outbox_unsent ON outbox(sent, seq)",
        "CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ]
    for statement in statements:
        db.execute(statement)


@migrations()
def m002_cash_allocations(db: sqlite_utils.Database) -> None:
    """Which part of each cash credit paid which order. A credit can be split (an overpayment
    leaves the rest as machine credit for the next order), so one ``order_id`` per credit is not
    enough; the free machine credit is what the credits hold beyond their allocations."""
    statements = [
        """CREATE TABLE cash_allocations (
            credit_id TEXT NOT NULL REFERENCES cash_credits(id),
            order_id TEXT NOT NULL REFERENCES orders(id),
            amount INTEGER NOT NULL, allocated_at TEXT NOT NULL,
            PRIMARY KEY (credit_id, order_id), CHECK (amount > 0))""",
        "CREATE INDEX cash_allocations_order ON cash_allocations(order_id)",
        # Credits attached before this migration were applied whole to their order.
        """INSERT INTO cash_allocations (credit_id, order_id, amount, allocated_at)
            SELECT id, order_id, amount, received_at FROM cash_credits
            WHERE order_id IS NOT NULL AND amount > 0""",
        "ALTER TABLE orders ADD COLUMN cancel_reason TEXT",
    ]
    for statement in statements:
        db.execute(statement)


@migrations()
def m003_device_sequences(db: sqlite_utils.Database) -> None:
    """Freshness of signed device messages (``edge.store.sequences``): per machine the highest
    ``seq`` accepted under its current key and the restore floor, and which (machine, seq) were
    accepted for which event inside the window."""
    statements = [
        """CREATE TABLE device_sequences (
            machine_id TEXT PRIMARY KEY, key_id TEXT NOT NULL,
            high_water INTEGER NOT NULL, floor INTEGER NOT NULL DEFAULT 0)""",
        """CREATE TABLE device_messages_seen (
            machine_id TEXT NOT NULL, seq INTEGER NOT NULL, event_id TEXT NOT NULL,
            kind TEXT NOT NULL, accepted_at TEXT NOT NULL,
            PRIMARY KEY (machine_id, seq))""",
    ]
    for statement in statements:
        db.execute(statement)


@migrations()
def m004_dead_letters(db: sqlite_utils.Database) -> None:
    """Outbox events the cloud refused, moved aside so the rest of the outbox flows on
    (``edge.store.dead_letters``). ``state`` is open until someone retries the event, which puts
    it back into the outbox under a new seq and the same event id."""
    statements = [
        """CREATE TABLE dead_letters (
            id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
            seq INTEGER NOT NULL, type TEXT NOT NULL, payload TEXT NOT NULL,
            occurred_at TEXT NOT NULL, source TEXT NOT NULL, http_status INTEGER,
            code TEXT NOT NULL, error TEXT NOT NULL, attempts INTEGER NOT NULL,
            state TEXT NOT NULL, first_failed_at TEXT NOT NULL, last_failed_at TEXT NOT NULL,
            retried_at TEXT, retried_seq INTEGER)""",
        "CREATE INDEX dead_letters_state ON dead_letters(state, id)",
    ]
    for statement in statements:
        db.execute(statement)


@migrations()
def m005_sealed_secrets(db: sqlite_utils.Database) -> None:
    """Command keys and customer phone numbers become sealed values (``edge.store.sealed``):
    the rows written in plaintext before are sealed here with the active master key, which the
    store binds to the connection before it applies migrations."""
    sealed.reseal_all(db, retire=False)


@migrations()
def m006_order_capabilities(db: sqlite_utils.Database) -> None:
    """Kiosk orders carry the hash of their secret order token (cancel and supersede need the
    token) and the client address that created them (per-client limits on open orders). Orders
    from before have neither: nobody can cancel or supersede them, and they expire."""
    statements = [
        "ALTER TABLE orders ADD COLUMN token_hash TEXT",
        "ALTER TABLE orders ADD COLUMN client TEXT",
        "CREATE INDEX orders_client ON orders(client, status)",
    ]
    for statement in statements:
        db.execute(statement)


@migrations()
def m007_money(db: sqlite_utils.Database) -> None:
    """Refunds, machine credit, provider details and slot switches (issue 7).

    - ``orders``: what the order gave back (``refund_amount`` electronic, ``credit_amount`` cash
      to the machine credit), cash received beyond its total (``overpaid_amount``), and the
      provider's details of its payment (provider, QR code id, UPI URI, hosted image).
    - ``refunds``: the refund requests the gateway made (or heard of from the cloud), with the
      status the cloud last reported; ids are deterministic (``rf-<order_id>-undispensed``...).
    - ``credit_entries``: every move of a machine's free cash credit, with the balance after.
    - ``cash_allocations.returned``: the part of an allocation given back to the machine credit
      because the units it paid did not come out. The allocation stays (it is the record of
      which coins paid the order); the free credit is ``received - SUM(amount - returned)``.
    - ``dispense_commands.money``: what the gateway did with the unit's money when the order
      ended (``refunded``, ``held``, ``credited``), so a late device answer knows.
    - ``catalog``: the slot switch (``enabled``, adopted from the cloud only when ``enable_rev``
      changes), the failed dispenses in a row, and why it was disabled.
    - ``machines.money_policy``: the tenant's ``contracts.sync.MoneyPolicy`` as JSON.
    - ``payments.provider_payment_id``: the provider's own payment id (Razorpay ``pay_...``).
    """
    statements = [
        "ALTER TABLE orders ADD COLUMN refund_amount INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE orders ADD COLUMN credit_amount INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE orders ADD COLUMN overpaid_amount INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE orders ADD COLUMN payment_provider TEXT",
        "ALTER TABLE orders ADD COLUMN qr_code_id TEXT",
        "ALTER TABLE orders ADD COLUMN upi_uri TEXT",
        "ALTER TABLE orders ADD COLUMN image_url TEXT",
        """CREATE TABLE refunds (
            refund_id TEXT PRIMARY KEY, order_id TEXT NOT NULL, payment_id TEXT NOT NULL,
            amount INTEGER NOT NULL, currency TEXT NOT NULL, reason TEXT NOT NULL,
            hold INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL, provider_refund_id TEXT,
            created_at TEXT NOT NULL, updated_at TEXT NOT NULL, CHECK (amount > 0))""",
        "CREATE INDEX refunds_order ON refunds(order_id)",
        """CREATE TABLE credit_entries (
            entry_id TEXT PRIMARY KEY, machine_id TEXT NOT NULL, currency TEXT NOT NULL,
            delta INTEGER NOT NULL, balance INTEGER NOT NULL, reason TEXT NOT NULL,
            order_id TEXT, credit_id TEXT, at TEXT NOT NULL)""",
        "CREATE INDEX credit_entries_machine ON credit_entries(machine_id, at)",
        "CREATE INDEX credit_entries_order ON credit_entries(order_id)",
        "ALTER TABLE cash_allocations ADD COLUMN returned INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE dispense_commands ADD COLUMN money TEXT",
        "ALTER TABLE catalog ADD COLUMN enabled INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE catalog ADD COLUMN enable_rev INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE catalog ADD COLUMN consecutive_failures INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE catalog ADD COLUMN disabled_reason TEXT",
        "ALTER TABLE machines ADD COLUMN money_policy TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE payments ADD COLUMN provider_payment_id TEXT",
    ]
    for statement in statements:
        db.execute(statement)
    _opening_credit_entries(db)


def _opening_credit_entries(db: sqlite_utils.Database) -> None:
    """Free credit that machines already held before credit entries existed gets one opening
    ``cash_in`` entry (and its outbox event), so the cloud's sum of deltas per machine equals
    the gateway's balance from the start."""
    rows = db.execute(
        "SELECT c.machine_id, c.currency, SUM(c.amount) - COALESCE((SELECT SUM(a.amount) "
        "FROM cash_allocations a JOIN cash_credits k ON k.id = a.credit_id "
        "WHERE k.machine_id = c.machine_id AND k.currency = c.currency), 0) AS free "
        "FROM cash_credits c GROUP BY c.machine_id, c.currency"
    ).fetchall()
    at = datetime.now(UTC).isoformat()
    for machine_id, currency, free in rows:
        if free <= 0:
            continue
        entry_id = f"ce-{uuid.uuid4().hex}"
        payload = {
            "entry_id": entry_id,
            "machine_id": machine_id,
            "currency": currency,
            "delta": free,
            "balance": free,
            "reason": "cash_in",
            "order_id": None,
            "credit_id": None,
        }
        db.execute(
            "INSERT INTO credit_entries (entry_id, machine_id, currency, delta, balance, reason, "
            "at) VALUES (?, ?, ?, ?, ?, 'cash_in', ?)",
            [entry_id, machine_id, currency, free, free, at],
        )
        db.execute(
            "INSERT INTO outbox (event_id, type, payload, occurred_at) VALUES (?, ?, ?, ?)",
            [entry_id, "credit.entry", json.dumps(payload, separators=(",", ":")), at],
        )
