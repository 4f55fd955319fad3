"""A stolen device's key signs as that one machine. It must not reach another machine's money:
a cash credit id is one event of one machine, so a credit signed by the stolen machine under an
id another machine sends (seen on the LAN while the gateway had not recorded it yet), or under
the id of an event the gateway already holds, must not make the genuine event a "duplicate"
that is acknowledged and forgotten. Real gateway, real amqtt broker, real SQLite store.
"""

import os
import time
from pathlib import Path

from sec_device_support import Site, attacker, creds, signed, wait_for
from standalone_site import MachineCreds

from contracts import topics

__all__ = ["creds"]


def _credit(amount: int, credit_id: str | None = None) -> dict[str, object]:
    return {
        "id": credit_id or os.urandom(16).hex(),
        "amount": amount,
        "currency": "INR",
        "ts": int(time.time()),
    }


async def test_a_stolen_device_cannot_take_another_machines_credit_id(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    """M2's key is stolen; the attacker learns the id of a credit M1 is sending (sniffed on the
    LAN before the gateway recorded it) and signs a credit of its own under that id first.
    Before the fix the gateway then acked M1's genuine 2000 as a duplicate: M1 forgot it, its
    customer's order stayed unpaid and the money was gone from every record."""
    site = Site(tmp_path / "gw", creds)
    m1, m2 = creds["M1"], creds["M2"]
    async with site.running() as gateway, attacker(gateway.mqtt_port, m2) as thief:
        sniffed = os.urandom(16).hex()
        await thief.publish(topics.CASH_CREDIT, signed(m2, 100, _credit(1, sniffed)))
        await thief.acked(sniffed)
        order_id = await site.cash_order(machine_id="M1")

        async with attacker(gateway.mqtt_port, m1) as device:
            await device.publish(topics.CASH_CREDIT, signed(m1, 100, _credit(2000, sniffed)))

            async def refused() -> bool:
                return site.refused("foreign_id") == 1

            await wait_for(refused)
            # not acked: the genuine credit stays in M1's journal, resent and counted, for an
            # operator to settle, instead of being dropped as if it had been recorded
            marker = _credit(500)
            await device.publish(topics.CASH_CREDIT, signed(m1, 101, marker))
            await device.acked(str(marker["id"]))
            assert device.acks == [marker["id"]]

        rows = await site.money_rows()
        assert {(c["id"], c["amount"], c["order_id"]) for c in rows["credits"]} == {
            (sniffed, 1, None),  # the thief's, still its machine's, nothing more
            (marker["id"], 500, order_id),
        }
        machines = await site.query("SELECT id, machine_id FROM cash_credits ORDER BY id")
        assert {r["id"]: r["machine_id"] for r in machines}[sniffed] == "M2"


async def test_a_credit_id_cannot_shadow_an_event_the_gateway_holds(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    """A thief knows the ids of events of its own machine (its orders' ids, its commands'
    cmd_ids). A credit signed under such an id was recorded but its outbox row was silently
    dropped (INSERT OR IGNORE on the event id): the cloud never heard of that cash."""
    site = Site(tmp_path / "gw", creds)
    m2 = creds["M2"]
    async with site.running() as gateway, attacker(gateway.mqtt_port, m2) as thief:
        order_id = await site.cash_order(machine_id="M2")
        snapshot_id = f"{order_id}-v1"
        assert await site.query("SELECT 1 FROM outbox WHERE event_id = ?", [snapshot_id])
        before = await site.money_rows()
        await thief.publish(topics.CASH_CREDIT, signed(m2, 100, _credit(2000, snapshot_id)))

        async def refused() -> bool:
            return site.refused("foreign_id") == 1

        await wait_for(refused)
        assert await site.money_rows() == before
        assert thief.acks == []


async def test_a_seq_sqlite_cannot_hold_is_refused_as_malformed(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    """A stolen key signs a credit with seq 2**63 or 10**30 (JSON numbers have no bound).
    Before the fix it reached SQLite and failed there: a handler error with a full traceback
    in the gateway's log for every such message, a cheap way to flood the log. Now it is a
    malformed body, counted and logged like any other refusal; nothing changes."""
    site = Site(tmp_path / "gw", creds)
    m2 = creds["M2"]
    async with site.running() as gateway, attacker(gateway.mqtt_port, m2) as thief:
        before = await site.money_rows()
        for seq in (2**63, 10**30):
            await thief.publish(topics.CASH_CREDIT, signed(m2, seq, _credit(2000)))

        async def refused() -> bool:
            return site.refused("malformed") == 2

        await wait_for(refused)
        handler_errors = gateway.metrics.registry.get_sample_value(
            "gateway_mqtt_rejected_total", {"reason": "handler_error"}
        )
        assert not handler_errors
        assert await site.money_rows() == before
        # the largest seq SQLite holds is still a valid (if self-defeating) seq
        top = _credit(100)
        await thief.publish(topics.CASH_CREDIT, signed(m2, 2**63 - 1, top))
        await thief.acked(str(top["id"]))
