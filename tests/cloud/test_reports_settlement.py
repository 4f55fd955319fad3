"""Settlement: per UTC day, machine and tender, against the real cloud (SQLite and Postgres),
orders and cash pushed by an enrolled gateway, provider rows written as the webhooks would."""

import csv
import io
import uuid

from report_support import Ledger, Pusher, at, item, snapshot

DAY = "2031-03-10"
NEXT = "2031-03-11"


async def _scene(tenant, enroll, cloud):
    site = await tenant.site()
    m1 = (await tenant.machine(site["id"], name="Lobby"))["machine"]["id"]
    m2 = (await tenant.machine(site["id"], name="Gym"))["machine"]["id"]
    gateway = await enroll(site["id"])
    out = Pusher(gateway)
    ledger = Ledger(cloud, tenant.id, site["id"], gateway.id)

    # Cash at Lobby: 2000 + 1000 for a 2500 order (500 over, kept as credit), 500 with no order,
    # 3500 for an order one of whose units (1000) failed and went back to credit.
    o1, o2 = f"o1-{uuid.uuid4()}", f"o2-{uuid.uuid4()}"
    await out.cash(m1, 2000, at(DAY, "09:00"), o1)
    await out.cash(m1, 1000, at(DAY, "09:01"), o1)
    await out.order(snapshot(o1, m1, at(DAY, "09:00"), items=[item("A1", 2500)]))
    await out.cash(m1, 500, at(DAY, "10:00"))
    await out.cash(m1, 3500, at(DAY, "11:00"), o2)
    o2_snap = snapshot(
        o2,
        m1,
        at(DAY, "11:00"),
        status="partially_completed",
        items=[item("A1", 2500), item("A2", 1000, failed=1)],
        credit_amount=1000,
    )
    await out.order(o2_snap)
    await ledger.set_order(o2, credit_amount=1000)
    # A cancelled cash order: its cash is machine credit, the order has none.
    o_cancel = f"oc-{uuid.uuid4()}"
    await out.order(
        snapshot(
            o_cancel, m1, at(DAY, "12:00"), status="cancelled", items=[item("A1", 2500)], paid=0
        )
    )

    # UPI at Lobby: one clean order, one with a 1000 unit refunded, one payment of nobody's.
    o3, o4 = f"o3-{uuid.uuid4()}", f"o4-{uuid.uuid4()}"
    p3, _ = await ledger.upi_paid(o3, m1, 2500, at(DAY, "13:00"))
    await out.order(
        snapshot(o3, m1, at(DAY, "13:00"), method="upi", items=[item("A1", 2500)], payment_id=p3)
    )
    p4, pp4 = await ledger.upi_paid(o4, m1, 3500, at(DAY, "14:00"))
    await out.order(
        snapshot(
            o4,
            m1,
            at(DAY, "14:00"),
            method="upi",
            status="partially_completed",
            items=[item("A1", 2500), item("A2", 1000, failed=1)],
            payment_id=p4,
            refund_amount=1000,
        )
    )
    await ledger.refund(
        f"rf-{o4}-undispensed",
        1000,
        at(NEXT, "09:00"),  # made the next day: still on the payment's row
        status="refunded",
        order_id=o4,
        payment_id=p4,
        provider_payment_id=pp4,
        machine_id=m1,
    )
    await ledger.provider_payment(700, at(DAY, "15:00"))

    # Sandbox at Gym: nothing came out, the refund waits for an operator (manual_review: the
    # refund worker leaves it alone, a pending one it would send at once); a voided one counts
    # nowhere.
    o6 = f"o6-{uuid.uuid4()}"
    p6 = await ledger.payment(o6, m2, 1000, at(DAY, "16:00"), provider="sandbox")
    await out.order(
        snapshot(
            o6,
            m2,
            at(DAY, "16:00"),
            method="sandbox",
            status="failed",
            items=[item("B1", 1000, failed=1)],
            payment_id=p6,
            refund_amount=1000,
        )
    )
    await ledger.refund(
        f"rf-{o6}-undispensed",
        1000,
        at(DAY, "16:05"),
        status="manual_review",
        order_id=o6,
        payment_id=p6,
        machine_id=m2,
        provider="sandbox",
    )
    await ledger.refund(
        f"rf-{o6}-held",
        1000,
        at(DAY, "16:05"),
        status="voided",
        order_id=o6,
        payment_id=p6,
        machine_id=m2,
        provider="sandbox",
    )

    # The next day: one cash order at Gym.
    o7 = f"o7-{uuid.uuid4()}"
    await out.cash(m2, 1000, at(NEXT, "08:00"), o7)
    await out.order(snapshot(o7, m2, at(NEXT, "08:00"), items=[item("B1", 1000)]))
    return site, m1, m2


def _rows(report):
    return {(r["day"], r["machine_id"], r["tender"]): r for r in report["rows"]}


def _money(row):
    keys = ("orders", "gross", "refunded", "refund_pending", "machine_credit", "net")
    return tuple(row[k] for k in keys)


async def test_settlement_rows_and_totals(tenant, enroll, cloud):
    site, m1, m2 = await _scene(tenant, enroll, cloud)
    reply = await tenant.admin.call(
        "GET", "/api/v1/reports/settlement", params={"from": DAY, "to": NEXT}
    )
    assert reply.status == 200, reply.body
    report = reply.data
    assert report["timezone"] == "UTC"
    assert (report["first_day"], report["last_day"]) == (DAY, NEXT)
    rows = _rows(report)
    assert set(rows) == {
        (DAY, m1, "cash"),
        (DAY, m1, "upi"),
        (DAY, None, "upi"),
        (DAY, m2, "sandbox"),
        (NEXT, m2, "cash"),
    }
    # cash: 7000 in; orders kept 2500 + 3500 - 1000; 2000 stayed as machine credit
    # (500 over, 500 without an order, 1000 of the failed unit)
    assert _money(rows[(DAY, m1, "cash")]) == (2, 7000, 0, 0, 2000, 5000)
    assert rows[(DAY, m1, "cash")]["machine_name"] == "Lobby"
    assert rows[(DAY, m1, "cash")]["site_id"] == site["id"]
    assert _money(rows[(DAY, m1, "upi")]) == (2, 6000, 1000, 0, 0, 5000)
    unmatched = rows[(DAY, None, "upi")]
    assert _money(unmatched) == (0, 700, 0, 0, 0, 700)
    assert unmatched["site_id"] is None and unmatched["machine_name"] is None
    assert _money(rows[(DAY, m2, "sandbox")]) == (1, 1000, 0, 1000, 0, 0)
    assert _money(rows[(NEXT, m2, "cash")]) == (1, 1000, 0, 0, 0, 1000)
    # Each row: net = gross - refunded - refund_pending - machine_credit.
    for row in report["rows"]:
        assert row["net"] == (
            row["gross"] - row["refunded"] - row["refund_pending"] - row["machine_credit"]
        )
    totals = report["totals"]
    assert len(totals) == 1 and totals[0]["currency"] == "INR" and totals[0]["tender"] is None
    assert _money(totals[0]) == (6, 15700, 1000, 1000, 2000, 11700)
    by_tender = {t["tender"]: _money(t) for t in report["totals_by_tender"]}
    assert by_tender == {
        "cash": (3, 8000, 0, 0, 2000, 6000),
        "sandbox": (1, 1000, 0, 1000, 0, 0),
        "upi": (2, 6700, 1000, 0, 0, 5700),
    }

    # One day only; one machine; one site (no unmatched row under a filter).
    one_day = await tenant.admin.call(
        "GET", "/api/v1/reports/settlement", params={"from": NEXT, "to": NEXT}
    )
    assert set(_rows(one_day.data)) == {(NEXT, m2, "cash")}
    gym = await tenant.admin.call(
        "GET", "/api/v1/reports/settlement", params={"from": DAY, "to": NEXT, "machine_id": m2}
    )
    assert set(_rows(gym.data)) == {(DAY, m2, "sandbox"), (NEXT, m2, "cash")}
    by_site = await tenant.admin.call(
        "GET",
        "/api/v1/reports/settlement",
        params={"from": DAY, "to": NEXT, "site_id": site["id"]},
    )
    assert (DAY, None, "upi") not in _rows(by_site.data) and len(by_site.data["rows"]) == 4


async def test_settlement_csv(tenant, enroll, cloud, api):
    _, m1, _ = await _scene(tenant, enroll, cloud)
    async with api.session.get(
        api.base + "/api/v1/reports/settlement",
        params={"from": DAY, "to": NEXT, "format": "csv"},
        headers={"Authorization": f"Bearer {tenant.admin.token}"},
    ) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/csv" and resp.charset == "utf-8"
        assert resp.headers["Content-Disposition"] == (
            f'attachment; filename="settlement-{DAY}-to-{NEXT}.csv"'
        )
        text = await resp.text()
    lines = list(csv.reader(io.StringIO(text)))
    assert lines[0] == [
        "day", "site_id", "machine_id", "machine_name", "tender", "currency", "orders",
        "gross_paise", "refunded_paise", "refund_pending_paise", "machine_credit_paise",
        "net_paise",
    ]  # fmt: skip
    body = {(r[0], r[2], r[4]): r for r in lines[1:]}
    assert body[(DAY, m1, "cash")][3] == "Lobby"
    assert body[(DAY, m1, "cash")][6:] == ["2", "7000", "0", "0", "2000", "5000"]
    assert body[("total", "", "all")][5:] == ["INR", "6", "15700", "1000", "1000", "2000", "11700"]
    assert len(lines) == 1 + 5 + 1


async def test_settlement_csv_cells_never_run_as_formulas(tenant, enroll, cloud, api):
    site = await tenant.site()
    mid = (await tenant.machine(site["id"], name="=HYPERLINK(1)"))["machine"]["id"]
    out = Pusher(await enroll(site["id"]))
    await out.cash(mid, 1000, at(DAY))
    async with api.session.get(
        api.base + "/api/v1/reports/settlement",
        params={"from": DAY, "to": DAY, "format": "csv"},
        headers={"Authorization": f"Bearer {tenant.admin.token}"},
    ) as resp:
        lines = list(csv.reader(io.StringIO(await resp.text())))
    assert lines[1][3] == "'=HYPERLINK(1)"


async def test_settlement_is_tenant_scoped(tenant, make_tenant, enroll, cloud):
    _, m1, _ = await _scene(tenant, enroll, cloud)
    other = await make_tenant()
    params = {"from": DAY, "to": NEXT}
    theirs = await other.admin.call("GET", "/api/v1/reports/settlement", params=params)
    assert theirs.status == 200 and theirs.data["rows"] == [] and theirs.data["totals"] == []
    named = await other.admin.call(
        "GET", "/api/v1/reports/settlement", params=params | {"machine_id": m1}
    )
    assert named.data["rows"] == []


async def test_settlement_refuses_bad_periods_and_lets_viewers_read(tenant):
    viewer = await tenant.user("viewer")
    ok = await viewer.call("GET", "/api/v1/reports/settlement", params={"from": DAY, "to": DAY})
    assert ok.status == 200 and ok.data["rows"] == []
    for params in (
        {"from": NEXT, "to": DAY},
        {"from": "2031-3-10", "to": DAY},
        {"from": "1700000000", "to": DAY},
        {"from": DAY, "to": "2031-02-30"},
        {"to": DAY},
        {"from": DAY, "to": DAY, "format": "xlsx"},
        {"from": DAY, "to": DAY, "extra": "1"},
    ):
        reply = await viewer.call("GET", "/api/v1/reports/settlement", params=params)
        assert reply.status == 400, (params, reply.body)
        assert reply.error["code"] == "validation_error"
    edge = await viewer.call(
        "GET", "/api/v1/reports/settlement", params={"from": "0001-01-01", "to": "9999-12-31"}
    )
    assert edge.status == 200, edge.body
