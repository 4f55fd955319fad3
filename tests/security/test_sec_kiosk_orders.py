"""Attack A on the kiosk API: a second LAN host takes over a cash sale. Before the order token,
any cash order for a machine superseded (cancelled) the customer's unpaid one and the coins the
customer then inserted paid the attacker's order; a sniffed order id cancelled a partly paid
order. Now cancel and supersede need the order's secret token."""

import secrets
from pathlib import Path

from polling import wait_for
from sec_kiosk_support import (
    ATTACKER_ADDRESS,
    CUSTOMER_ADDRESS,
    KioskSite,
    creds,
    kiosk_client,
    kiosk_site,
    metric,
)
from standalone_site import MachineCreds

__all__ = ["creds"]  # a fixture


async def _status(site: KioskSite, order_id: str) -> str:
    return (await site.gateway.store.get_order(order_id)).status.value


async def test_another_clients_cash_order_does_not_take_over_the_sale(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    async with (
        kiosk_site(tmp_path, creds) as site,
        kiosk_client(site.gateway, CUSTOMER_ADDRESS) as customer,
        kiosk_client(site.gateway, ATTACKER_ADDRESS) as attacker,
    ):
        status, created, _ = await customer.order()
        assert status == 201
        order = created["data"]
        before = await site.gateway.store.get_order(order["id"])
        # The attacker tries again and again (every second in the field), with no token, a
        # made-up one and a malformed one: each is refused and nothing is cancelled.
        for token in (None, secrets.token_urlsafe(32), "x", None, secrets.token_urlsafe(32)):
            status, refused, _ = await attacker.order(token=token)
            assert status == 409, refused
            assert refused["error"]["code"] == "machine_busy"
        after = await site.gateway.store.get_order(order["id"])
        assert (after.status.value, after.version) == ("awaiting_payment", before.version)
        assert await site.gateway.store.query("SELECT count(*) AS n FROM orders") == [{"n": 1}]
        assert 'reason="machine_busy"} 5.0' in await metric(
            site.gateway, "gateway_kiosk_refused_total"
        )

        # The customer's coins, signed by the machine, pay the customer's own order.
        await site.m1.insert_coin(1000)
        await site.m1.insert_coin(1000)

        async def completed() -> bool:
            return await _status(site, order["id"]) == "completed"

        await wait_for(completed, within=15)
        paid = await site.gateway.store.get_order(order["id"])
        assert paid.paid_amount == 2000 and len(site.m1.motor_runs) == 1
        assert await site.gateway.store.machine_credit("M1", "INR") == 0


async def test_cancel_needs_the_order_token(tmp_path: Path, creds: dict[str, MachineCreds]) -> None:
    async with (
        kiosk_site(tmp_path, creds) as site,
        kiosk_client(site.gateway, CUSTOMER_ADDRESS) as customer,
        kiosk_client(site.gateway, ATTACKER_ADDRESS) as attacker,
    ):
        status, created, _ = await customer.order(items=[{"id": "M1-A1", "quantity": 2}])
        assert status == 201
        order, token = created["data"], created["data"]["order_token"]
        await site.m1.insert_coin(1000)  # partly paid: 1000 of 4000

        async def partly_paid() -> bool:
            return (await site.gateway.store.get_order(order["id"])).paid_amount == 1000

        await wait_for(partly_paid)
        before = await site.gateway.store.get_order(order["id"])
        # The attacker knows the order id (sniffed, or read off the screen) and its own valid
        # token of another order.
        _, own, _ = await attacker.order(machine_id="M2", items=[{"id": "M2-A1", "quantity": 1}])
        other_token = own["data"]["order_token"]
        attempts = [
            (None, "order_token_required"),
            ("", "order_token_required"),
            (secrets.token_urlsafe(32), "order_token_invalid"),
            (other_token, "order_token_invalid"),
            (token[:-1], "order_token_invalid"),
            ("not a token at all", "order_token_invalid"),
        ]
        for guess, code in attempts:
            status, refused = await attacker.cancel(order["id"], guess)
            assert status == 403, refused
            assert refused["success"] is False and refused["error"]["code"] == code
        after = await site.gateway.store.get_order(order["id"])
        assert (after.status.value, after.paid_amount, after.version) == (
            "awaiting_payment",
            1000,
            before.version,
        )
        counted = await metric(site.gateway, "gateway_kiosk_refused_total")
        assert 'reason="order_token_required"} 2.0' in counted
        assert 'reason="order_token_invalid"} 4.0' in counted

        # The customer's own token cancels it; the inserted cash stays as machine credit.
        status, cancelled = await customer.cancel(order["id"], token)
        assert status == 200 and cancelled["data"]["status"] == "cancelled"
        assert await site.gateway.store.machine_credit("M1", "INR") == 1000


async def test_idempotent_replay_hands_over_a_fresh_token(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    """A kiosk that lost the create's answer replays it with the same Idempotency-Key and gets
    the order with a new token (only hashes are kept); the lost one no longer works."""
    async with (
        kiosk_site(tmp_path, creds) as site,
        kiosk_client(site.gateway, CUSTOMER_ADDRESS) as customer,
    ):
        key = "kiosk-" + secrets.token_hex(16)
        status, first, _ = await customer.order(key=key)
        assert status == 201
        status, replay, _ = await customer.order(key=key)
        assert status == 200 and replay["data"]["id"] == first["data"]["id"]
        old, new = first["data"]["order_token"], replay["data"]["order_token"]
        assert old != new and len(new) == 43
        rows = await site.gateway.store.query("SELECT token_hash FROM orders")
        assert len(rows) == 1 and new not in rows[0]["token_hash"]  # only its hash is stored
        status, _ = await customer.cancel(first["data"]["id"], old)
        assert status == 403
        status, _ = await customer.cancel(first["data"]["id"], new)
        assert status == 200


async def test_the_token_holder_starts_over(tmp_path: Path, creds: dict[str, MachineCreds]) -> None:
    """The customer's kiosk replaces its own unpaid cash order with its token, and the coins pay
    the new one."""
    async with (
        kiosk_site(tmp_path, creds) as site,
        kiosk_client(site.gateway, CUSTOMER_ADDRESS) as customer,
    ):
        _, first, _ = await customer.order()
        status, second, _ = await customer.order(
            items=[{"id": "M1-A2", "quantity": 1}], token=first["data"]["order_token"]
        )
        assert status == 201
        assert await _status(site, first["data"]["id"]) == "cancelled"
        await site.m1.insert_coin(2000)

        async def completed() -> bool:
            return await _status(site, second["data"]["id"]) == "completed"

        await wait_for(completed, within=15)
        assert (await site.gateway.store.get_order(first["data"]["id"])).paid_amount == 0
