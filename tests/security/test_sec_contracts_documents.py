"""Attack 8 (documents): the cloud's OpenAPI did not state rules its server enforces (NUL
characters, whole-number floats, 410 on claims, Allow on 405) and the kiosk API had no document.
Both documents now state them, and the servers do what the documents say."""

from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from sec_contracts_support import live_cloud, live_gateway

from edge.http import routes
from edge.http.routes import ROUTES


def _walk(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        return [node] + [n for value in node.values() for n in _walk(value)]
    if isinstance(node, list):
        return [n for value in node for n in _walk(value)]
    return []


def _request_strings(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every string schema a request is validated against (bodies, parameters)."""
    schemas = doc["components"]["schemas"]
    seen: set[str] = set()
    found: list[dict[str, Any]] = []

    def visit(node: Any) -> None:
        for sub in _walk(node):
            ref = sub.get("$ref")
            if isinstance(ref, str) and ref not in seen:
                seen.add(ref)
                visit(schemas[ref.rsplit("/", 1)[1]])
            if sub.get("type") == "string" and "enum" not in sub and "const" not in sub:
                found.append(sub)

    for item in doc["paths"].values():
        for op in item.values():
            visit(op.get("requestBody", {}))
            visit([p["schema"] for p in op.get("parameters", [])])
    return found


async def test_kiosk_serves_its_own_document(tmp_path: Path) -> None:
    async with live_gateway(tmp_path) as gateway:
        async with aiohttp.ClientSession(base_url=gateway.http_url) as http:
            async with http.get("/api/v1/openapi.json") as resp:
                assert resp.status == 200
                doc = await resp.json()
    # The routes the gateway registers (routes.setup is what the gateway's app runs).
    app = web.Application()
    routes.setup(app)
    registered = {
        (route.method, resource.canonical)
        for resource in app.router.resources()
        if not resource.canonical.startswith("/static")
        for route in resource
        if route.method != "HEAD"
    }
    paths = doc["paths"]
    documented = {(m.upper(), p) for p, item in paths.items() for m in item}
    # Every route but the redirect and the static files is documented, and nothing more.
    assert documented == registered - {("GET", "/")}
    assert documented == {(r.method, r.path) for r in ROUTES}

    create = paths["/api/v1/orders"]["post"]
    assert {p["name"] for p in create["parameters"]} == {"Idempotency-Key", "X-Order-Token"}
    assert {"200", "201", "400", "404", "409", "413", "429", "503"} <= set(create["responses"])
    assert "Retry-After" in create["responses"]["429"]["headers"]
    cancel = paths["/api/v1/orders/{order_id}/cancel"]["post"]
    token = next(p for p in cancel["parameters"] if p["name"] == "X-Order-Token")
    assert token["required"] is True and "403" in cancel["responses"]
    created = doc["components"]["schemas"]["CreatedOrder"]
    assert "order_token" in created["required"]
    for status, response in create["responses"].items():
        if status.startswith("4") or status.startswith("5"):
            ref = response["content"]["application/json"]["schema"]["$ref"]
            assert ref == "#/components/schemas/ErrorEnvelope"
    body = doc["components"]["schemas"]["CreateOrderRequest"]["properties"]
    name = body["customer_name"]["anyOf"][0]
    assert name["maxLength"] == 100 and "\\x00" in name["pattern"]
    assert "customer_name" not in doc["components"]["schemas"]["PublicOrder"]["properties"]
    assert "Allow" in doc["components"]["responses"]["MethodNotAllowed"]["headers"]
    assert "NUL" in doc["info"]["description"] and "5.0" in doc["info"]["description"]
    for schema in _request_strings(doc):
        assert "pattern" in schema, schema


async def test_cloud_document_states_what_the_server_enforces(tmp_path: Path) -> None:
    async with live_cloud(tmp_path) as cloud:
        async with aiohttp.ClientSession(base_url=cloud.url) as http:
            async with http.get("/api/v1/openapi.json") as resp:
                doc = await resp.json()
    paths = doc["paths"]
    assert "410" in paths["/api/v1/claims/redeem"]["post"]["responses"]
    assert "401" not in paths["/api/v1/claims/redeem"]["post"]["responses"]
    assert "409" in paths["/api/v1/machines/onboard"]["post"]["responses"]
    assert "409" not in paths["/api/v1/orders"]["get"]["responses"]
    assert "403" in paths["/api/v1/orders"]["get"]["responses"]
    login = paths["/api/v1/auth/login"]["post"]["responses"]
    assert "Retry-After" in login["429"]["headers"]
    assert "NUL" in doc["info"]["description"] and "5.0" in doc["info"]["description"]
    # Every string a request carries states the NUL rule (or a stricter pattern).
    for schema in _request_strings(doc):
        assert "pattern" in schema, schema
    config = doc["components"]["schemas"]["MachineConfig"]["properties"]["config"]
    assert config["additionalProperties"] == {"$ref": "#/components/schemas/NulFreeJsonValue"}
    limit = next(p for p in paths["/api/v1/orders"]["get"]["parameters"] if p["name"] == "limit")
    assert {k: limit["schema"][k] for k in ("type", "minimum", "maximum")} == {
        "type": "integer",
        "minimum": 1,
        "maximum": 200,
    }


async def test_405_names_the_allowed_methods_on_both_servers(tmp_path: Path) -> None:
    async with live_cloud(tmp_path / "c") as cloud, live_gateway(tmp_path / "g") as gateway:
        auth = {"Authorization": f"Bearer {cloud.token}"}
        async with aiohttp.ClientSession() as http:
            for method, url, allow in [
                ("DELETE", f"{gateway.http_url}/api/v1/orders", {"POST"}),
                ("PUT", f"{gateway.http_url}/api/v1/machines", {"GET"}),
                ("PATCH", f"{cloud.url}/api/v1/sites", {"GET", "POST"}),
                # A concrete path wins over a template (OpenAPI's rule): this is not
                # GET /machines/{machine_id} with the id "onboard".
                ("GET", f"{cloud.url}/api/v1/machines/onboard", {"POST"}),
                ("OPTIONS", f"{cloud.url}/api/v1/machines/onboard", {"POST"}),
            ]:
                async with http.request(method, url, headers=auth) as resp:
                    assert resp.status == 405, (method, url)
                    allowed = {m.strip() for m in resp.headers["Allow"].split(",")}
                    assert allowed == allow, (method, url, allowed)
                    body = await resp.json()
                    assert body["success"] is False
                    assert body["error"]["code"] == "method_not_allowed"


async def test_integers_follow_one_rule_on_both_servers(tmp_path: Path) -> None:
    """5.0 is the integer 5 (what "type: integer" means in JSON Schema); 5.5, "5" and true
    are refused; a query integer is decimal digits."""
    async with live_cloud(tmp_path / "c") as cloud, live_gateway(tmp_path / "g") as gateway:
        auth = {"Authorization": f"Bearer {cloud.token}"}
        async with aiohttp.ClientSession() as http:
            kiosk = f"{gateway.http_url}/api/v1/orders"
            for quantity, status in [(1.0, 201), (1.5, 400), ("1", 400), (True, 400)]:
                line = {"id": "M2-A2", "quantity": quantity}
                body = {"machine_id": "M2", "items": [line], "payment_method": "cash"}
                async with http.post(kiosk, json=body) as resp:
                    assert resp.status == status, (quantity, await resp.text())
                    if status == 201:
                        assert (await resp.json())["data"]["items"][0]["quantity"] == 1
            onboard = f"{cloud.url}/api/v1/machines/onboard"
            for price, status in [(2500.0, 201), (2500.5, 400), ("2500", 400), (True, 400)]:
                item = {"slot": "A1", "name": "Cola", "price": price}
                body = {"name": f"M-{price!r}", "site_id": cloud.site_id, "catalog": [item]}
                async with http.post(onboard, json=body, headers=auth) as resp:
                    assert resp.status == status, (price, await resp.text())
                    if status == 201:
                        catalog = (await resp.json())["data"]["machine"]["catalog"]
                        assert catalog[0]["price"] == 2500
            for limit, status in [("5", 200), ("5.0", 400), ("+5", 400), (" 5", 400)]:
                async with http.get(
                    f"{cloud.url}/api/v1/orders", params={"limit": limit}, headers=auth
                ) as resp:
                    assert resp.status == status, (limit, await resp.text())
