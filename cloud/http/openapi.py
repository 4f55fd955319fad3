"""OpenAPI 3.1 built from the route registry's pydantic models (with contracts.openapi, which
the gateway's kiosk document is built with too)."""

from typing import Any

from cloud.http.registry import Endpoint
from contracts import openapi as oa

SUMMARY = (
    "The operator API: tenants' users, sites, gateways, machines, catalogs, orders and payments. "
    "Authenticate with POST /api/v1/auth/login and send the access token as a bearer token."
)
# Routes that have not declared their error statuses keep this conservative list.
_UNDECLARED_ERRORS = (400, 401, 403, 404, 409)


def error_statuses(ep: Endpoint) -> set[int]:
    """The statuses an endpoint answers besides its success status."""
    if ep.errors is None:
        statuses = set(_UNDECLARED_ERRORS)
        if ep.public and ep.body is None:
            statuses.discard(401)
        return statuses
    # Every route refuses NUL in its path and query with a 400.
    statuses = {400, *ep.errors}
    if not ep.public:
        # 403 too without a permission: a token that must change its password opens only
        # change-password, profile and logout (cloud.auth.sessions).
        statuses |= {401, 403}
    if "{" in ep.path:
        statuses.add(404)
    return statuses


def build_openapi(endpoints: list[Endpoint], title: str, version: str) -> dict[str, Any]:
    refs, schemas = oa.route_schemas(endpoints)

    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        op: dict[str, Any] = {
            "summary": ep.summary,
            "tags": [ep.tag],
            "operationId": ep.handler.__name__,
        }
        params = oa.path_parameters(ep.path, printable=False)
        if ep.query is not None:
            params += oa.query_parameters(ep.query)
        if params:
            op["parameters"] = params
        if ep.body is not None:
            op["requestBody"] = oa.json_body(refs[(ep.body, "validation")])
        data: dict[str, Any] = {}
        if ep.response is not None:
            ref = refs[(ep.response, "serialization")]
            data = {"type": "array", "items": ref} if ep.many else ref
        op["responses"] = {
            str(ep.status): oa.success_response(data),
            **oa.error_responses(error_statuses(ep)),
        }
        for media in ep.alt_content:
            op["responses"][str(ep.status)]["content"][media] = {"schema": {"type": "string"}}
        if not ep.public:
            op["security"] = [{"bearerAuth": []}]
        paths.setdefault(ep.path, {})[ep.method.lower()] = op

    return oa.document(
        title=title,
        version=version,
        summary=SUMMARY,
        paths=paths,
        schemas=schemas,
        security_schemes={
            "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
        },
    )
