"""Reconciliation of one UTC day: each mismatch kind made on purpose and listed with its ids; a
clean day is balanced; another tenant sees nothing."""

import uuid

from report_support import Ledger, Pusher, at, item, snapshot

DAY = "2031-05-20"


async def _setup(tenant, enroll, cloud):
    site = await tenant.site()
    mid = (await tenant.machine(site["id"]))["machine"]["id"]
    gateway = await enroll(site["id"])
    return site, mid, Pusher(gateway), Ledger(cloud, tenant.id, site["id"], gateway.id)


async def _reconcile(client, day=DAY, **params):
    reply = await client.call(
        "GET", "/api/v1/reports/reconciliation", params={"date": day} | params
    )
    assert reply.status == 200, reply.body
    return reply.data


def _oid(name):
    return f"{name}-{uuid.uuid4()}"


async def test_a_clean_day_is_balanced(tenant, enroll, cloud):
    _, mid, out, ledger = await _setup(tenant, enroll, cloud)
    # paid and vended; paid, one unit failed and refunded; paid after cancel, refunded whole;
    # a sandbox order vended
    ok, part, late, sand = _oid("ok"), _oid("part"), _oid("late"), _oid("sand")
    p_ok, _ = await ledger.upi_paid(ok, mid, 2500, at(DAY, "10:00"))
    await out.order(snapshot(ok, mid, at(DAY, "10:00"), method="upi", items=[item("A1", 2500)],
                             payment_id=p_ok))  # fmt: skip
    p_part, pp_part = await ledger.upi_paid(part, mid, 3500, at(DAY, "11:00"))
    await out.order(
        snapshot(part, mid, at(DAY, "11:00"), method="upi", status="partially_completed",
                 items=[item("A1", 2500), item("A2", 1000, failed=1)], payment_id=p_part,
                 refund_amount=1000)
    )  # fmt: skip
    await ledger.refund(f"rf-{part}-undispensed", 1000, at(DAY, "11:05"), status="refunded",
                        order_id=part, payment_id=p_part, provider_payment_id=pp_part)  # fmt: skip
    p_late, pp_late = await ledger.upi_paid(late, mid, 2500, at(DAY, "12:10"))
    await out.order(snapshot(late, mid, at(DAY, "12:00"), method="upi", status="cancelled",
                             items=[item("A1", 2500)], paid=0, payment_id=p_late))  # fmt: skip
    await ledger.refund(f"rf-{p_late}-unserved", 2500, at(DAY, "12:11"), status="refunded",
                        reason="unserved", order_id=late, payment_id=p_late,
                        provider_payment_id=pp_late)  # fmt: skip
    p_sand = await ledger.payment(sand, mid, 1000, at(DAY, "13:00"), provider="sandbox")
    await out.order(snapshot(sand, mid, at(DAY, "13:00"), method="sandbox",
                             items=[item("B1", 1000)], payment_id=p_sand))  # fmt: skip
    # cash is not reconciled against a provider
    await out.order(snapshot(_oid("cash"), mid, at(DAY, "14:00"), items=[item("A1", 2500)]))

    report = await _reconcile(tenant.admin)
    assert report["verdict"] == "balanced", report["mismatches"]
    assert report["mismatches"] == []
    assert set(report["counts"].values()) == {0} and len(report["counts"]) == 5
    assert report["checked"]["provider_payments"] == 4
    assert report["checked"]["orders"] == 4


async def test_each_mismatch_kind_is_listed_with_its_ids(tenant, make_tenant, enroll, cloud):
    site, mid, out, ledger = await _setup(tenant, enroll, cloud)

    # payment_without_order: a captured payment on a QR code that is not ours
    stray = await ledger.provider_payment(700, at(DAY, "08:00"), qr_code_id="qr_notours000001")
    # ... and one fully refunded by an operator is no longer listed
    handled = await ledger.provider_payment(900, at(DAY, "08:05"))
    await ledger.refund(f"rf-{handled}-unmatched", 900, at(DAY, "09:00"), status="refunded",
                        reason="unmatched", provider_payment_id=handled)  # fmt: skip

    # order_paid_without_payment: the order says paid, the provider never captured
    unpaid = _oid("unpaid")
    p_unpaid = await ledger.payment(unpaid, mid, 2500, None, status="created")
    await out.order(snapshot(unpaid, mid, at(DAY, "09:00"), method="upi", items=[item("A1", 2500)],
                             payment_id=p_unpaid))  # fmt: skip

    # amount_mismatch: captured 2000 for an order that shows 2500 paid
    short = _oid("short")
    p_short, pp_short = await ledger.upi_paid(short, mid, 2000, at(DAY, "10:00"))
    await out.order(snapshot(short, mid, at(DAY, "10:00"), method="upi", items=[item("A1", 2500)],
                             payment_id=p_short))  # fmt: skip

    # refund_owed_not_made (a): one unit failed, no refund requested
    jam = _oid("jam")
    p_jam, pp_jam = await ledger.upi_paid(jam, mid, 3500, at(DAY, "11:00"))
    await out.order(
        snapshot(jam, mid, at(DAY, "11:00"), method="upi", status="partially_completed",
                 items=[item("A1", 2500), item("A2", 1000, failed=1)], payment_id=p_jam)
    )  # fmt: skip
    # refund_owed_not_made (b): paid after cancel, its refund stuck in manual_review
    late = _oid("late")
    p_late, pp_late = await ledger.upi_paid(late, mid, 2500, at(DAY, "12:10"))
    await out.order(snapshot(late, mid, at(DAY, "12:00"), method="upi", status="cancelled",
                             items=[item("A1", 2500)], paid=0, payment_id=p_late))  # fmt: skip
    stuck = await ledger.refund(f"rf-{p_late}-unserved", 2500, at(DAY, "12:11"),
                                status="manual_review", reason="unserved", order_id=late,
                                payment_id=p_late, provider_payment_id=pp_late)  # fmt: skip
    # refund_owed_not_made (c): a second payment of one order, never refunded
    twice_paid = _oid("dup")
    p_dup, _ = await ledger.upi_paid(twice_paid, mid, 1000, at(DAY, "13:00"))
    await out.order(snapshot(twice_paid, mid, at(DAY, "13:00"), method="upi",
                             items=[item("B1", 1000)], payment_id=p_dup))  # fmt: skip
    pp_second = await ledger.provider_payment(1000, at(DAY, "13:01"), payment_id=p_dup,
                                              order_id=twice_paid)  # fmt: skip

    # refund_made_twice: 1000 of units failed, 2000 refunded for them
    over = _oid("over")
    p_over, pp_over = await ledger.upi_paid(over, mid, 1000, at(DAY, "14:00"))
    await out.order(snapshot(over, mid, at(DAY, "14:00"), method="upi", status="failed",
                             items=[item("B1", 1000, failed=1)], payment_id=p_over,
                             refund_amount=1000))  # fmt: skip
    for suffix in ("undispensed", "held"):
        await ledger.refund(
            f"rf-{over}-{suffix}", 1000, at(DAY, "14:05"), status="refunded", order_id=over,
            payment_id=p_over, provider_payment_id=pp_over,
        )  # fmt: skip

    report = await _reconcile(tenant.admin)
    assert report["verdict"] == "mismatches"

    def key(found):
        return tuple(str(x) for x in found)

    got = sorted(
        (
            (
                m["kind"],
                m["order_id"],
                m["provider_payment_id"],
                m["amount"],
                tuple(m["refund_ids"]),
            )
            for m in report["mismatches"]
        ),
        key=key,
    )
    refunded_twice = (f"rf-{over}-held", f"rf-{over}-undispensed")
    assert got == sorted(
        [
            ("payment_without_order", None, stray, 700, ()),
            ("order_paid_without_payment", unpaid, None, 2500, ()),
            ("amount_mismatch", short, pp_short, 2000, ()),
            ("refund_owed_not_made", jam, pp_jam, 1000, ()),
            ("refund_owed_not_made", late, pp_late, 2500, (stuck,)),
            ("refund_owed_not_made", twice_paid, pp_second, 1000, ()),
            # 2000 refunded: over what the failed unit was owed, and over the capture itself
            ("refund_made_twice", over, pp_over, 1000, refunded_twice),
            ("refund_made_twice", over, pp_over, 1000, refunded_twice),
        ],
        key=key,
    )
    assert report["counts"] == {
        "payment_without_order": 1,
        "order_paid_without_payment": 1,
        "amount_mismatch": 1,
        "refund_owed_not_made": 3,
        "refund_made_twice": 2,
    }
    by_order = {(m["kind"], m["order_id"]): m for m in report["mismatches"]}
    assert by_order[("payment_without_order", None)]["provider_payment_id"] == stray
    assert by_order[("payment_without_order", None)]["amount"] == 700
    assert by_order[("order_paid_without_payment", unpaid)]["payment_id"] == p_unpaid
    assert by_order[("amount_mismatch", short)]["provider_payment_id"] == pp_short
    assert "2500 paid" in by_order[("amount_mismatch", short)]["detail"]
    jam_m = by_order[("refund_owed_not_made", jam)]
    assert jam_m["amount"] == 1000 and "no refund was requested" in jam_m["detail"]
    late_m = by_order[("refund_owed_not_made", late)]
    assert late_m["refund_ids"] == [stuck] and "manual_review" in late_m["detail"]
    assert late_m["provider_payment_id"] == pp_late and late_m["amount"] == 2500
    dup_m = by_order[("refund_owed_not_made", twice_paid)]
    assert dup_m["provider_payment_id"] == pp_second and dup_m["amount"] == 1000
    twice = [m for m in report["mismatches"] if m["kind"] == "refund_made_twice"]
    assert {m["order_id"] for m in twice} == {over}
    assert all(m["amount"] == 1000 for m in twice)
    assert all(
        sorted(m["refund_ids"]) == [f"rf-{over}-held", f"rf-{over}-undispensed"] for m in twice
    )

    # The site filter keeps what belongs to the site; the stray payment belongs to none.
    by_site = await _reconcile(tenant.admin, site_id=site["id"])
    assert by_site["counts"]["payment_without_order"] == 0
    assert by_site["counts"]["refund_owed_not_made"] == 3
    # Another day, another tenant: nothing.
    assert (await _reconcile(tenant.admin, day="2031-05-21"))["verdict"] == "balanced"
    other = await make_tenant()
    theirs = await _reconcile(other.admin)
    assert theirs["verdict"] == "balanced" and theirs["checked"]["provider_payments"] == 0


async def test_reconciliation_refuses_a_bad_date(tenant):
    for params in ({}, {"date": "20310520"}, {"date": "2031-05-32"}, {"date": DAY, "x": "1"}):
        reply = await tenant.admin.call("GET", "/api/v1/reports/reconciliation", params=params)
        assert reply.status == 400, (params, reply.body)


async def test_a_wrong_amount_refunded_whole_is_an_amount_mismatch_only(tenant, enroll, cloud):
    _, mid, out, ledger = await _setup(tenant, enroll, cloud)
    order = _oid("wrong")
    qr = "qr_wrongamount01"
    ours = await ledger.payment(order, mid, 2500, None, status="created", qr_code_id=qr)
    await out.order(snapshot(order, mid, at(DAY, "10:00"), method="upi", status="cancelled",
                             items=[item("A1", 2500)], paid=0, payment_id=ours))  # fmt: skip
    wrong = await ledger.provider_payment(
        2400, at(DAY, "10:01"), payment_id=ours, order_id=order, qr_code_id=qr
    )
    await ledger.refund(f"rf-{wrong}-mismatch", 2400, at(DAY, "10:02"), status="refunded",
                        reason="unmatched", order_id=order, payment_id=ours,
                        provider_payment_id=wrong)  # fmt: skip
    report = await _reconcile(tenant.admin)
    assert report["counts"]["refund_made_twice"] == 0, report["mismatches"]
    assert report["counts"]["refund_owed_not_made"] == 0, report["mismatches"]
    # a cancelled order shows nothing paid; the capture was owed back whole and was refunded
    assert report["verdict"] == "balanced", report["mismatches"]
