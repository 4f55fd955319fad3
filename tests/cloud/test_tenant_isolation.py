"""Tenants never see each other; roles limit writes."""

import uuid
from datetime import UTC, datetime


def _order(order_id, machine_id, version=1, status="completed"):
    now = datetime.now(UTC).isoformat()
    return {
        "id": order_id,
        "machine_id": machine_id,
        "status": status,
        "payment_method": "cash",
        "total_amount": 2500,
        "paid_amount": 2500,
        "currency": "INR",
        "items": [
            {
                "id": f"{order_id}-i1",
                "catalog_item_id": "c1",
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
        "version": version,
    }


async def test_tenant_a_cannot_see_tenant_b(make_tenant, enroll):
    a, b = await make_tenant(), await make_tenant("via-server")
    site_b = await b.site()
    machine_b = (await b.machine(site_b["id"]))["machine"]
    gw_b = await enroll(site_b["id"], owner=b)
    order_id = f"order-b-{uuid.uuid4().hex}"
    pushed = await gw_b.push(
        [
            {
                "seq": 1,
                "event_id": uuid.uuid4().hex,
                "type": "order.snapshot",
                "occurred_at": datetime.now(UTC).isoformat(),
                "payload": _order(order_id, machine_b["id"]),
            }
        ]
    )
    assert pushed.status == 200, pushed.body

    mid = machine_b["id"]
    for method, path, body in [
        ("GET", f"/api/v1/machines/{mid}", None),
        ("GET", f"/api/v1/machines/{mid}/catalog", None),
        ("PUT", f"/api/v1/machines/{mid}/catalog", {"items": []}),
        ("GET", f"/api/v1/machines/{mid}/config", None),
        ("PUT", f"/api/v1/machines/{mid}/config", {"config": {"x": 1}}),
        ("GET", f"/api/v1/machines/{mid}/status", None),
        ("DELETE", f"/api/v1/machines/{mid}/decommission", None),
        ("GET", f"/api/v1/orders/{order_id}", None),
        ("GET", f"/api/v1/sites/{site_b['id']}", None),
        ("POST", f"/api/v1/sites/{site_b['id']}/enrollment-tokens", None),
        ("POST", "/api/v1/machines/onboard", {"name": "X", "site_id": site_b["id"]}),
    ]:
        reply = await a.admin.call(method, path, body)
        assert reply.status == 404, (method, path, reply.body)
        assert reply.error["code"] == "not_found"

    for path in (
        "/api/v1/machines",
        "/api/v1/orders",
        "/api/v1/sites",
        "/api/v1/gateways",
        "/api/v1/payments",
        "/api/v1/users",
    ):
        listed = await a.admin.call("GET", path)
        assert listed.status == 200
        assert all(item.get("tenant_id", a.id) == a.id for item in listed.data), path
        assert mid not in str(listed.data) and order_id not in str(listed.data)

    # B itself sees its own data (so the 404s above are about scoping, not absence).
    assert (await b.admin.call("GET", f"/api/v1/orders/{order_id}")).status == 200
    assert (await b.admin.call("GET", f"/api/v1/machines/{mid}")).status == 200
    # The machine was not modified by A's attempts.
    assert (await b.admin.call("GET", f"/api/v1/machines/{mid}")).data["status"] == "active"


async def test_viewer_is_read_only_and_operator_cannot_manage_users(tenant):
    site = await tenant.site()
    machine = (await tenant.machine(site["id"]))["machine"]
    viewer = await tenant.user("viewer")
    assert (await viewer.call("GET", "/api/v1/machines")).status == 200
    assert (await viewer.call("GET", f"/api/v1/machines/{machine['id']}/catalog")).status == 200
    for method, path, body in [
        ("POST", "/api/v1/machines/onboard", {"name": "V", "site_id": site["id"]}),
        ("PUT", f"/api/v1/machines/{machine['id']}/catalog", {"items": []}),
        ("PUT", f"/api/v1/machines/{machine['id']}/config", {"config": {}}),
        ("DELETE", f"/api/v1/machines/{machine['id']}/decommission", None),
        ("POST", "/api/v1/sites", {"name": "nope"}),
        ("POST", f"/api/v1/sites/{site['id']}/enrollment-tokens", None),
        (
            "POST",
            "/api/v1/users",
            {"email": "x@example.com", "password": "12345678", "role": "admin"},
        ),
    ]:
        reply = await viewer.call(method, path, body)
        assert reply.status == 403, (method, path, reply.body)
        assert reply.error["code"] == "forbidden"

    operator = await tenant.user("operator")
    put = await operator.call(
        "PUT", f"/api/v1/machines/{machine['id']}/config", {"config": {"temp_c": 4}}
    )
    assert put.status == 200
    denied = await operator.call(
        "POST", "/api/v1/users", {"email": "y@example.com", "password": "12345678", "role": "admin"}
    )
    assert denied.status == 403
