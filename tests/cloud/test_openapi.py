"""The OpenAPI document is built from the models the routes validate with."""

from typing import Any

from cloud.app import public_endpoints


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


async def test_openapi_document(api):
    async with api.session.get(api.base + "/api/v1/openapi.json") as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    paths = doc["paths"]
    for path, method in [
        ("/api/v1/auth/login", "post"),
        ("/api/v1/auth/refresh", "post"),
        ("/api/v1/auth/logout", "post"),
        ("/api/v1/auth/profile", "get"),
        ("/api/v1/machines/onboard", "post"),
        ("/api/v1/machines/{machine_id}/catalog", "put"),
        ("/api/v1/machines/{machine_id}/config", "get"),
        ("/api/v1/machines/{machine_id}/status", "get"),
        ("/api/v1/machines/{machine_id}/decommission", "delete"),
        ("/api/v1/gateways/enroll", "post"),
        ("/api/v1/orders", "get"),
        ("/api/v1/orders/{order_id}", "get"),
        ("/api/v1/payments", "get"),
    ]:
        assert method in paths[path], (path, method)
    assert len([m for p in paths.values() for m in p]) == len(public_endpoints())

    schemas = doc["components"]["schemas"]
    for ref in _refs(doc):
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in schemas, ref
    onboard = paths["/api/v1/machines/onboard"]["post"]
    body_ref = onboard["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = schemas[body_ref.rsplit("/", 1)[1]]
    assert set(body["required"]) == {"name", "site_id"}
    item = schemas["CatalogItemIn"]
    assert item["properties"]["price"]["type"] == "integer"
    assert onboard["security"] == [{"bearerAuth": []}]
    assert "security" not in paths["/api/v1/auth/login"]["post"]
    assert "ErrorEnvelope" in schemas
    orders = paths["/api/v1/orders"]["get"]
    assert {p["name"] for p in orders["parameters"]} == {"machine_id", "status", "limit", "offset"}
