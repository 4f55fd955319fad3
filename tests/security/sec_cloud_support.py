"""Fixtures for the cloud attacker's tests: the accounts fixtures (the real cloud of tests/cloud on
SQLite and PostgreSQL) plus an enrolled gateway's mTLS client, and small event builders."""

import uuid
from datetime import UTC, datetime
from typing import Any

from sec_accounts_support import cloudconf

enroll = cloudconf.enroll


def order_event(seq: int, machine_id: str, **changes: Any) -> dict[str, Any]:
    """A pushed ``order.snapshot`` of a completed cash order (``changes`` edit the payload)."""
    order_id = str(uuid.uuid4())
    now = datetime.now(UTC).isoformat()
    payload = {
        "id": order_id,
        "machine_id": machine_id,
        "status": "completed",
        "payment_method": "cash",
        "total_amount": 2500,
        "paid_amount": 2500,
        "currency": "INR",
        "customer_name": "Asha",
        "items": [
            {
                "id": f"{order_id}-1",
                "catalog_item_id": "cat-1",
                "slot": "A1",
                "name": "Cola",
                "unit_price": 2500,
                "quantity": 1,
                "dispensed": 1,
                "dispense_status": "dispensed",
            }
        ],
        "created_at": now,
        "updated_at": now,
        "version": 1,
    } | changes
    return {
        "seq": seq,
        "event_id": uuid.uuid4().hex,
        "type": "order.snapshot",
        "occurred_at": now,
        "payload": payload,
    }
