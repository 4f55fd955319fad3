"""Bad input gets a 4xx in the envelope, never a 500."""

import pytest


@pytest.mark.parametrize(
    ("path", "data", "json_body"),
    [
        ("/api/v1/auth/login", "{not json", None),
        ("/api/v1/auth/login", None, ["a", "list"]),
        ("/api/v1/auth/login", None, {"email": "a@example.com"}),
        ("/api/v1/auth/login", None, {"email": 5, "password": ["x"]}),
        ("/api/v1/auth/login", "", None),
        ("/api/v1/auth/refresh", "null", None),
    ],
)
async def test_public_bodies(api, path, data, json_body):
    reply = await api.call("POST", path, json_body, data=data)
    assert reply.status == 400, reply.body
    assert reply.error["code"] == "validation_error"
    assert reply.error["requestId"]


async def test_operator_bodies(tenant):
    site = await tenant.site()
    sid = site["id"]
    cases = [
        ("POST", "/api/v1/sites", {"name": ""}),
        ("POST", "/api/v1/sites", {"name": "x", "unknown": 1}),
        ("POST", "/api/v1/machines/onboard", {"site_id": sid}),
        (
            "POST",
            "/api/v1/machines/onboard",
            {"name": "M", "site_id": sid, "catalog": [{"slot": "A1", "name": "x", "price": 12.5}]},
        ),
        (
            "POST",
            "/api/v1/machines/onboard",
            {"name": "M", "site_id": sid, "catalog": [{"slot": "A1", "name": "x", "price": "12"}]},
        ),
        (
            "POST",
            "/api/v1/machines/onboard",
            {"name": "M", "site_id": sid, "catalog": [{"slot": "A1", "name": "x", "price": -1}]},
        ),
        ("POST", "/api/v1/machines/onboard", {"name": "M", "site_id": sid, "currency": "rupees"}),
        (
            "POST",
            "/api/v1/machines/onboard",
            {"name": "M", "site_id": sid, "catalog": [{"slot": "a 1", "name": "x", "price": 1}]},
        ),
        (
            "POST",
            "/api/v1/users",
            {"email": "not-an-email", "password": "12345678", "role": "admin"},
        ),
        (
            "POST",
            "/api/v1/users",
            {"email": "a@example.com", "password": "12345678", "role": "root"},
        ),
    ]
    for method, path, body in cases:
        reply = await tenant.admin.call(method, path, body)
        assert reply.status == 400, (path, body, reply.body)
        assert reply.error["code"] == "validation_error"
        assert isinstance(reply.error["details"], list) and reply.error["details"]
    float_price = await tenant.admin.call("POST", "/api/v1/machines/onboard", cases[3][2])
    assert any(d["loc"][-1] == "price" for d in float_price.error["details"])
    bad_query = await tenant.admin.call("GET", "/api/v1/orders", params={"limit": "many"})
    assert bad_query.status == 400
    bad_status = await tenant.admin.call("GET", "/api/v1/orders", params={"status": "shipped"})
    assert bad_status.status == 400


async def test_unknown_route_and_method(api, tenant):
    missing = await api.call("GET", "/api/v1/nothing-here")
    assert missing.status == 404
    assert missing.error["code"] == "not_found"
    wrong_method = await tenant.admin.call("PATCH", "/api/v1/machines")
    assert wrong_method.status == 405
    assert wrong_method.error["code"] == "method_not_allowed"
    unknown_machine = await tenant.admin.call("GET", "/api/v1/machines/does-not-exist")
    assert unknown_machine.status == 404


async def test_password_never_echoed(api):
    reply = await api.call("POST", "/api/v1/auth/login", {"email": 7, "password": "s3cret-value"})
    assert reply.status == 400
    assert "s3cret-value" not in str(reply.body)


async def test_request_id_header_matches_envelope(api):
    async with api.session.get(
        api.base + "/api/v1/auth/profile", headers={"X-Request-Id": "trace-123"}
    ) as resp:
        body = await resp.json()
        assert resp.status == 401
        assert resp.headers["X-Request-Id"] == "trace-123"
        assert body["error"]["requestId"] == "trace-123"


async def test_sync_listener_errors_use_the_envelope(tenant, enroll):
    site = await tenant.site()
    gateway = await enroll(site["id"])
    missing = await gateway.call("GET", "/sync/v1/nothing")
    assert missing.status == 404
    assert missing.body["success"] is False
    assert missing.body["error"]["code"] == "not_found"
    not_json = await gateway.session.post(
        gateway.sync_url + "/sync/v1/events",
        data=b"{oops",
        headers={"Content-Type": "application/json"},
    )
    assert not_json.status == 400
    assert (await not_json.json())["error"]["code"] == "validation_error"
    not_json.release()
