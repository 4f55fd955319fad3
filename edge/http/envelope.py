"""The HTTP error envelope, request ids, and the one place exceptions become status codes."""

import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from contracts.text import is_printable
from edge.errors import (
    CatalogItemNotFound,
    ClientLimitExceeded,
    GatewayError,
    IdempotencyConflict,
    InsufficientStock,
    MachineBusy,
    MachineNotFound,
    OrderConflict,
    OrderNotFound,
    OrderTokenInvalid,
    OrderTokenRequired,
    OrderTooLarge,
    PaymentUnavailable,
    SlotDisabled,
    StoreError,
)

log = logging.getLogger(__name__)

REQUEST_ID = web.RequestKey("request_id", str)
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An HTTP error answered with the envelope."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details
        self.headers = headers or {}


def path_param(request: web.Request, name: str) -> str:
    """A path parameter, held to the printable-text rule the sync contract applies to ids."""
    value = request.match_info[name]
    if not is_printable(value):
        raise ApiError(
            400,
            "validation_error",
            "request validation failed",
            [{"loc": ["path", name], "msg": "must be printable text", "type": "value_error"}],
        )
    return value


def ok(data: Any, status: int = 200) -> web.Response:
    return web.json_response({"success": True, "data": data}, status=status)


def _envelope(request_id: str, error: ApiError) -> web.Response:
    body = {
        "success": False,
        "error": {
            "code": error.code,
            "message": error.message,
            "details": error.details,
            "timestamp": datetime.now(UTC).isoformat(),
            "requestId": request_id,
        },
    }
    return web.json_response(body, status=error.status, dumps=lambda o: json.dumps(o, default=str))


def _translate(exc: BaseException) -> ApiError:
    match exc:
        case ApiError():
            return exc
        case ValidationError():
            details = exc.errors(include_url=False, include_context=False)
            return ApiError(400, "validation_error", "request validation failed", details)
        case MachineNotFound():
            return ApiError(404, "machine_not_found", f"no active machine {exc.args[0]!r}")
        case OrderNotFound():
            return ApiError(404, "order_not_found", "no such order")
        case CatalogItemNotFound():
            return ApiError(
                400, "unknown_item", f"item {exc.args[0]!r} is not sold by this machine"
            )
        case InsufficientStock():
            return ApiError(409, "insufficient_stock", "not enough stock", exc.args[0])
        case IdempotencyConflict():
            return ApiError(
                409, "idempotency_conflict", "Idempotency-Key was used with a different request"
            )
        case ClientLimitExceeded():
            return ApiError(
                429,
                "too_many_orders",
                str(exc),
                {"limit": exc.reason, "retry_after_s": exc.retry_after_s},
                {"Retry-After": str(exc.retry_after_s)},
            )
        case OrderTokenRequired():
            return ApiError(403, "order_token_required", "this needs the order's X-Order-Token")
        case OrderTokenInvalid():
            return ApiError(403, "order_token_invalid", "X-Order-Token is not this order's")
        case OrderTooLarge():
            return ApiError(409, "order_too_large", str(exc))
        case MachineBusy():
            return ApiError(409, "machine_busy", str(exc))
        case SlotDisabled():
            return ApiError(
                409,
                "slot_disabled",
                str(exc),
                {"id": exc.catalog_item_id, "slot": exc.slot, "reason": exc.reason},
            )
        case OrderConflict():
            return ApiError(409, "order_conflict", str(exc))
        case PaymentUnavailable():
            # The order (if any) is cancelled and nothing was charged; cash still works.
            return ApiError(
                503,
                "payment_unavailable",
                str(exc),
                {"reason": exc.reason, "retry_in_s": exc.retry_in_s, "alternatives": ["cash"]},
            )
        case StoreError():
            return ApiError(503, "store_unavailable", "the gateway cannot store orders right now")
        case GatewayError():
            return ApiError(503, "gateway_error", str(exc))
        case web.HTTPException():
            code = re.sub(r"\W+", "_", exc.reason.lower()).strip("_") or "http_error"
            return ApiError(exc.status, code, exc.reason)
        case _:
            return ApiError(500, "internal_error", "unexpected error")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    supplied = request.headers.get("X-Request-Id", "")
    request_id = supplied if _REQUEST_ID_OK.match(supplied) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _envelope(request_id, _translate(exc))
        if "Allow" in exc.headers:
            # A 405 names the methods the path supports (RFC 9110), envelope or not.
            response.headers["Allow"] = exc.headers["Allow"]
    except Exception as exc:
        error = _translate(exc)
        if error.status >= 500:
            log.error("request %s failed: %r", request_id, exc, exc_info=error.status == 500)
        response = _envelope(request_id, error)
        response.headers.update(error.headers)
    if not response.prepared:
        response.headers["X-Request-Id"] = request_id
    return response
