"""The response envelope: ``{"success": true, "data": ...}`` or the error form."""

import json
import uuid
from typing import Any

from aiohttp import web

from cloud.db.times import utcnow

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def ok(data: Any, status: int = 200) -> web.Response:
    return web.json_response({"success": True, "data": data}, status=status, dumps=_dumps)


def request_id(request: web.Request) -> str:
    existing = request.get(REQUEST_ID)
    if existing is not None:
        return existing
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    value = incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else uuid.uuid4().hex
    request[REQUEST_ID] = value
    return value


def error(
    request: web.Request, status: int, code: str, message: str, details: Any = None
) -> web.Response:
    body = {
        "success": False,
        "error": {
            "code": code,
            "message": message,
            "details": details,
            "timestamp": utcnow().isoformat(),
            "requestId": request_id(request),
        },
    }
    return web.json_response(body, status=status, dumps=_dumps)
