"""Attack 3: one event the cloud refuses used to stop the whole site's sync.

A kiosk order with ``"customer_name": "Eve\\u0000"`` reached the outbox; the cloud refused every
batch holding it with 400 and the push loop sent the same batch forever, so no later order or cash
event reached the cloud, while ``/health`` said ``ok``. The kiosk now refuses such input (the
contracts part); here the bad event is written into the outbox directly, as an older gateway
version or a gateway bug would, and each replay runs against the real cloud (SQLite and
PostgreSQL) and the real gateway on loopback.
"""

import json
import uuid

import sqlalchemy as sa
from polling import wait_for
from sec_sync_support import (
    SyncedSite,
    order_snapshot,
    sync_cloud_db,
    sync_postgres_url,
    synced_site,
)

from cloud.db import schema as t

__all__ = ["sync_cloud_db", "sync_postgres_url", "synced_site"]


async def _count(site: SyncedSite, table: sa.Table, *where: sa.ColumnElement[bool]) -> int:
    query = sa.select(sa.func.count()).select_from(table)
    for clause in where:
        query = query.where(clause)
    async with site.cloud.engine.connect() as conn:
        return int(await conn.scalar(query) or 0)


async def test_one_bad_event_does_not_stop_the_sites_sync(synced_site: SyncedSite) -> None:
    site = synced_site
    before = await site.kiosk_cash_order()
    good, bad = str(uuid.uuid4()), str(uuid.uuid4())
    credit_id = uuid.uuid4().hex
    eve = order_snapshot(bad, site.machine_id, site.catalog["A1"])
    eve["customer_name"] = "Eve\u0000"
    bad_event = uuid.uuid4().hex
    # The bad event sits in the middle of one batch: an order before it, cash after it.
    site.write_outbox(
        [
            (uuid.uuid4().hex, "order.snapshot", order_snapshot(good, site.machine_id, "x")),
            (bad_event, "order.snapshot", eve),
            (
                credit_id,
                "cash.credit",
                {
                    "credit_id": credit_id,
                    "machine_id": site.machine_id,
                    "amount": 2000,
                    "currency": "INR",
                },
            ),
        ]
    )
    after = await site.kiosk_cash_order("A2")

    # Everything else reaches the cloud.
    async def rest_arrived() -> bool:
        return all([await site.cloud_order(o) for o in (before, good, after)]) and (
            await _count(site, t.cash_credits, t.cash_credits.c.credit_id == credit_id) == 1
        )

    await wait_for(rest_arrived, within=30)
    assert await site.cloud_order(bad) is None
    assert await site.gateway.store.outbox_backlog() == 0

    # The gateway says so: degraded, with the count and where to look.
    health = await site.health()
    assert health["status"] == "degraded"
    assert health["dead_letters"]["count"] == 1
    assert "dead-letters list" in health["dead_letters"]["reason"]
    async with site.http.get("/metrics") as response:
        metrics = await response.text()
    assert "gateway_dead_letters 1.0" in metrics
    assert 'gateway_events_dead_lettered_total{source="cloud"} 1.0' in metrics

    # The gateway CLI lists it (beside the running gateway) ...
    listed = site.cli("list")
    assert listed.returncode == 0, listed.stderr
    [line] = listed.stdout.splitlines()
    assert line.startswith("#1 open order.snapshot") and bad_event in line
    assert "validation_error" in line and "NUL" in line
    [record] = [json.loads(x) for x in site.cli("list", "--json").stdout.splitlines()]
    assert json.loads(record["payload"])["customer_name"] == "Eve\u0000"

    # ... and so does the cloud API, for this tenant.
    [letter] = await site.cloud_dead_letters()
    assert (letter["event_id"], letter["error_code"]) == (bad_event, "validation_error")
    assert letter["gateway_id"] == site.gateway.cloud.status()["gateway_id"]

    # Retrying it unchanged fails again (one more attempt on both sides), nothing is stored.
    retried = site.cli("retry", "1")
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.startswith("retried 1 dead letter(s): #1 as seq ")

    async def refused_again() -> bool:
        letters = await site.cloud_dead_letters()
        return bool(letters) and letters[0]["attempts"] == 2

    await wait_for(refused_again, within=30)

    async def reopened() -> bool:
        return (await site.gateway.store.dead_letter_count()) == 1

    await wait_for(reopened, within=30)
    assert await site.cloud_order(bad) is None

    # Fixed (the operator repairs the name in the stored event), then retried: delivered once.
    eve["customer_name"] = "Eve"
    site.gateway_sql(
        "UPDATE dead_letters SET payload = ? WHERE event_id = ?", [json.dumps(eve), bad_event]
    )
    retried = site.cli("retry", "--all")
    assert retried.returncode == 0, retried.stderr

    async def delivered() -> bool:
        return await site.cloud_order(bad) is not None

    await wait_for(delivered, within=30)
    assert await site.cloud_dead_letters() == []
    [resolved] = await site.cloud_dead_letters("resolved")
    assert resolved["event_id"] == bad_event
    assert await _count(site, t.sync_events, t.sync_events.c.event_id == bad_event) == 1
    assert await _count(site, t.orders, t.orders.c.id == bad) == 1

    async def healthy() -> bool:
        return (await site.health())["status"] == "ok"

    await wait_for(healthy, within=10)
    assert site.cli("list").stdout.strip() == "no dead letters"
    # A retry of a letter already retried is refused clearly.
    again = site.cli("retry", "1")
    assert again.returncode == 1
    assert again.stderr.strip() == "vending-gateway dead-letters: error: no open dead letter #1"


async def test_a_batch_the_cloud_refuses_whole_is_split_to_the_culprit(
    synced_site: SyncedSite,
) -> None:
    """A batch-level refusal (an envelope the cloud cannot read: an event id with a space; an
    older cloud refusing any bad event the same way) is split until the refused event stands
    alone; it is moved aside and the events around it are delivered."""
    site = synced_site
    orders = [str(uuid.uuid4()) for _ in range(6)]
    events = [
        (uuid.uuid4().hex, "order.snapshot", order_snapshot(o, site.machine_id, "x"))
        for o in orders
    ]
    bad_id = "bad event id"  # not an id the cloud can key anything by
    culprit = order_snapshot(str(uuid.uuid4()), site.machine_id, "x")
    events.insert(4, (bad_id, "order.snapshot", culprit))
    site.write_outbox(events)

    async def all_arrived() -> bool:
        return all([await site.cloud_order(o) for o in orders])

    await wait_for(all_arrived, within=30)
    [letter] = await site.gateway.store.list_dead_letters()
    assert (letter.event_id, letter.source, letter.http_status) == (bad_id, "isolated", 400)
    assert letter.code == "validation_error"
    # The cloud could not key it, so it holds no dead letter for it: the gateway's is the record.
    assert await site.cloud_dead_letters() == []
    assert (await site.health())["dead_letters"]["count"] == 1
    async with site.http.get("/metrics") as response:
        assert 'gateway_events_dead_lettered_total{source="isolated"} 1.0' in await response.text()


async def test_an_event_for_another_sites_machine_is_isolated_and_never_stored(
    synced_site: SyncedSite,
) -> None:
    """An identity conflict stays a whole-batch 409 at the cloud (nothing of another site is
    touched); the gateway isolates the one event and delivers the rest."""
    site = synced_site
    elsewhere = (await site.admin.create_site(f"Elsewhere {uuid.uuid4().hex[:6]}", "Far"))["id"]
    foreign = await site.admin.onboard_machine(name="Far", site_id=elsewhere, catalog=[])
    foreign_id = foreign["machine"]["id"]
    orders = [str(uuid.uuid4()) for _ in range(3)]
    intruder = str(uuid.uuid4())
    events = [
        (uuid.uuid4().hex, "order.snapshot", order_snapshot(o, site.machine_id, "x"))
        for o in orders
    ]
    events.insert(
        1, (uuid.uuid4().hex, "order.snapshot", order_snapshot(intruder, foreign_id, "x"))
    )
    site.write_outbox(events)

    async def all_arrived() -> bool:
        return all([await site.cloud_order(o) for o in orders])

    await wait_for(all_arrived, within=30)
    [letter] = await site.gateway.store.list_dead_letters()
    assert (letter.http_status, letter.code, letter.source) == (409, "conflict", "isolated")
    assert await _count(site, t.orders, t.orders.c.id == intruder) == 0
    assert await _count(site, t.orders, t.orders.c.machine_id == foreign_id) == 0


async def test_a_refusal_that_is_not_the_events_fault_moves_nothing_aside(
    synced_site: SyncedSite,
) -> None:
    """A revoked certificate (401 on every push) must not empty the outbox into dead letters:
    only refusals about what was sent (400/409/413/422) blame an event."""
    site = synced_site
    gateway_id = site.gateway.cloud.status()["gateway_id"]
    await site.admin.request("POST", f"/gateways/{gateway_id}/revoke")
    order_id = str(uuid.uuid4())
    site.write_outbox(
        [(uuid.uuid4().hex, "order.snapshot", order_snapshot(order_id, site.machine_id, "x"))]
    )

    async def refused_twice() -> bool:
        error = str(site.gateway.cloud.status()["last_error"] or "")
        return "push" in error and "HTTP 401" in error

    await wait_for(refused_twice, within=30)
    assert await site.gateway.store.dead_letter_count() == 0
    assert await site.gateway.store.outbox_backlog() == 1
    assert await site.cloud_order(order_id) is None


async def test_outbox_rows_the_gateway_cannot_read_are_set_aside(synced_site: SyncedSite) -> None:
    """Rows another gateway version wrote (an event type this one does not know, an id it would
    not make) used to crash the push loop before anything was sent; they go to the dead letters
    and the events behind them flow on."""
    site = synced_site
    order_id = str(uuid.uuid4())
    site.write_outbox(
        [
            (uuid.uuid4().hex, "refund.issued", {"amount": 100}),
            ("short", "cash.credit", {"credit_id": "c", "machine_id": site.machine_id}),
            (uuid.uuid4().hex, "order.snapshot", order_snapshot(order_id, site.machine_id, "x")),
        ]
    )

    async def arrived() -> bool:
        return await site.cloud_order(order_id) is not None

    await wait_for(arrived, within=30)
    letters = await site.gateway.store.list_dead_letters()
    assert sorted(x.type for x in letters) == ["cash.credit", "refund.issued"]
    assert {(x.source, x.code) for x in letters} == {("unreadable", "unreadable_event")}
    assert (await site.health())["dead_letters"]["count"] == 2
