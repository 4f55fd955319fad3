"""A machine's free cash credit, as its gateway pushed it (credit.entry events), visible to
operators: balance, the gateway's last reported balance, the moves paged newest first."""

import uuid

from report_support import Pusher, at

DAY = "2031-06-01"


def _entry(mid, delta, balance, reason, minute, **extra):
    return {
        "entry_id": f"ce-{uuid.uuid4().hex}",
        "machine_id": mid,
        "currency": "INR",
        "delta": delta,
        "balance": balance,
        "reason": reason,
    } | extra, at(DAY, f"10:{minute:02d}")


async def test_machine_credit_balance_and_entries(tenant, make_tenant, enroll):
    site = await tenant.site()
    mid = (await tenant.machine(site["id"]))["machine"]["id"]
    out = Pusher(await enroll(site["id"]))
    order_id = str(uuid.uuid4())
    moves = [
        _entry(mid, 2000, 2000, "cash_in", 1, credit_id="cc-1aaaaaaaa"),
        _entry(mid, 1000, 3000, "cash_in", 2, credit_id="cc-2aaaaaaaa"),
        _entry(mid, -2500, 500, "order_payment", 3, order_id=order_id),
        _entry(mid, 1000, 1500, "undispensed", 4, order_id=order_id),
    ]
    for payload, when in moves:
        await out.push("credit.entry", payload, when=when)
    # A replay changes nothing.
    reply = await out.gateway.push(
        [
            {
                "seq": 1,
                "event_id": out.sent[0],
                "type": "credit.entry",
                "occurred_at": moves[0][1].isoformat(),
                "payload": moves[0][0],
            }
        ]
    )
    assert reply.data["duplicates"] == 1

    credit = await tenant.admin.call("GET", f"/api/v1/machines/{mid}/credit")
    assert credit.status == 200, credit.body
    data = credit.data
    assert (data["machine_id"], data["currency"]) == (mid, "INR")
    assert data["balance"] == 1500 and data["last_balance_reported"] == 1500
    assert data["entries_total"] == 4
    assert [e["reason"] for e in data["entries"]] == [
        "undispensed",
        "order_payment",
        "cash_in",
        "cash_in",
    ]
    assert data["entries"][1]["order_id"] == order_id and data["entries"][1]["delta"] == -2500
    assert data["entries"][3]["credit_id"] == "cc-1aaaaaaaa"
    page = await tenant.admin.call(
        "GET", f"/api/v1/machines/{mid}/credit", params={"limit": "2", "offset": "1"}
    )
    assert [e["delta"] for e in page.data["entries"]] == [-2500, 1000]
    assert page.data["balance"] == 1500

    detail = await tenant.admin.call("GET", f"/api/v1/machines/{mid}")
    assert detail.data["credit_balance"] == 1500

    viewer = await tenant.user("viewer")
    assert (await viewer.call("GET", f"/api/v1/machines/{mid}/credit")).status == 200
    other = await make_tenant()
    hidden = await other.admin.call("GET", f"/api/v1/machines/{mid}/credit")
    assert hidden.status == 404


async def test_a_machine_with_no_credit_moves(tenant):
    site = await tenant.site()
    onboarded = await tenant.machine(site["id"])
    assert onboarded["machine"]["credit_balance"] == 0
    mid = onboarded["machine"]["id"]
    credit = await tenant.admin.call("GET", f"/api/v1/machines/{mid}/credit")
    assert credit.data["balance"] == 0 and credit.data["entries"] == []
    assert credit.data["last_balance_reported"] is None
    bad = await tenant.admin.call("GET", f"/api/v1/machines/{mid}/credit", params={"limit": "0"})
    assert bad.status == 400
