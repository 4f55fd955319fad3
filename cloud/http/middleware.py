"""Request ids and the one place where errors become the HTTP envelope."""

import logging

from aiohttp import web
from aiohttp.typedefs import Handler
from sqlalchemy.exc import DataError

from cloud.errors import CloudError
from cloud.http.envelope import REQUEST_ID_HEADER, error, request_id

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


@web.middleware
async def envelope_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = request_id(request)
    try:
        response = await handler(request)
    except CloudError as exc:
        if exc.status >= 500:
            log.error("request %s failed: %s", rid, exc.message)
        response = error(request, exc.status, exc.code, exc.message, exc.details)
        response.headers.update(exc.headers)
    except DataError:
        # Input the validators let through but the database refuses (a backstop: NUL, range).
        log.warning("request %s: database refused a value", rid)
        response = error(request, 400, "validation_error", "a value is not storable")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        response = error(request, exc.status, code, exc.reason)
        if "Allow" in exc.headers:
            # A 405 names the methods the path supports (RFC 9110), envelope or not.
            response.headers["Allow"] = exc.headers["Allow"]
    except Exception:
        log.exception("request %s: unhandled error", rid)
        response = error(request, 500, "internal_error", "internal server error")
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = rid
    return response
