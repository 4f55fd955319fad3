"""The kiosk API's OpenAPI document (``GET /api/v1/openapi.json``), built from the route table in
``edge.http.routes`` and the pydantic models that validate its requests and shape its
responses, with the same pieces as the cloud's document (``contracts.openapi``)."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from contracts import openapi as oa
from edge.http.guard import ORDER_TOKEN_HEADER, ORDER_TOKEN_PATTERN
from edge.http.schemas import IDEMPOTENCY_KEY_PATTERN

SUMMARY = (
    "The gateway's kiosk API: this site's machines and catalogs, orders (create with an "
    "Idempotency-Key, read, follow as Server-Sent Events, cancel), the kiosk page's payment QR "
    "code, /health and /metrics. It is served on the site network without authentication: "
    "cancelling an order, or replacing an unpaid cash order, needs the secret order_token its "
    "creation returned (X-Order-Token), and each client address may hold a few unpaid orders "
    "and create a bounded number per minute (429 with Retry-After beyond)."
)
VERSION = "1.0.0"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class KioskRoute:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    # JSON routes: the request body model and the model of the success envelope's ``data``.
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    many: bool = False
    # Any other success body: its media type and schema (SSE, metrics, the page, the QR code).
    media_type: str | None = None
    media_schema: dict[str, Any] | None = None
    statuses: tuple[int, ...] = (200,)
    errors: tuple[int, ...] = ()
    idempotency_key: bool = False
    # X-Order-Token: "require" (cancel) or "replace" (create: lets a cash order replace the
    # unpaid cash order of that token on the same machine).
    order_token: str | None = None


IDEMPOTENCY_KEY_HEADER: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "Makes the request safe to repeat: a repeat with the same key and the same body "
        "answers 200 with the order the first one made; the same key with another body is a "
        "409 idempotency_conflict."
    ),
    "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
}


def order_token_header(required: bool) -> dict[str, Any]:
    if required:
        description = (
            "The order_token the order's creation returned. Without it the answer is 403 "
            "order_token_required, with another token 403 order_token_invalid."
        )
    else:
        description = (
            "The order_token of this client's own unpaid cash order on the same machine: the "
            "new cash order replaces (cancels) it. Without the token, while another unpaid "
            "cash order is open on the machine, the answer is 409 machine_busy."
        )
    return {
        "name": ORDER_TOKEN_HEADER,
        "in": "header",
        "required": required,
        "description": description,
        "schema": {"type": "string", "pattern": ORDER_TOKEN_PATTERN},
    }


def build_kiosk_openapi(routes: list[KioskRoute]) -> dict[str, Any]:
    refs, schemas = oa.route_schemas(routes)

    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        op: dict[str, Any] = {
            "summary": route.summary,
            "tags": [route.tag],
            "operationId": route.handler.__name__,
        }
        params = oa.path_parameters(route.path, printable=True)
        if route.idempotency_key:
            params.append(IDEMPOTENCY_KEY_HEADER)
        if route.order_token is not None:
            params.append(order_token_header(route.order_token == "require"))
        if params:
            op["parameters"] = params
        if route.body is not None:
            op["requestBody"] = oa.json_body(refs[(route.body, "validation")])
        responses: dict[str, Any] = {}
        for status in route.statuses:
            if route.media_type is not None:
                responses[str(status)] = {
                    "description": "Success",
                    "content": {route.media_type: {"schema": route.media_schema or {}}},
                }
                continue
            data: dict[str, Any] = {}
            if route.response is not None:
                ref = refs[(route.response, "serialization")]
                data = {"type": "array", "items": ref} if route.many else ref
            responses[str(status)] = oa.success_response(data)
        errors = set(route.errors)
        if "{" in route.path:
            errors |= {400, 404}  # a path parameter that is not printable text, or unknown
        op["responses"] = responses | oa.error_responses(errors)
        paths.setdefault(route.path, {})[route.method.lower()] = op

    return oa.document(
        title="Vending gateway kiosk API",
        version=VERSION,
        summary=SUMMARY,
        paths=paths,
        schemas=schemas,
    )
