"""The Razorpay REST subset under ``/v1``: HTTP Basic auth with key id and secret, JSON bodies,
Razorpay's error envelope for every refusal, and injectable faults per endpoint."""

import asyncio
import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web

from tools.razorpay_server.engine import Engine
from tools.razorpay_server.entities import Account, collection
from tools.razorpay_server.errors import ApiError, AuthFailed, BadRequest

ENGINE = web.AppKey("engine", Engine)

ApiHandler = Callable[[Engine, Account, web.Request], Awaitable[dict[str, Any]]]


def error_response(exc: ApiError) -> web.Response:
    return web.json_response(exc.envelope(), status=exc.status)


def basic_credentials(header: str | None) -> tuple[str, str]:
    """(key id, key secret) from an ``Authorization: Basic ...`` header."""
    if not header:
        raise AuthFailed()
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        raise AuthFailed()
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise AuthFailed() from exc
    key_id, sep, key_secret = decoded.partition(":")
    if not sep:
        raise AuthFailed()
    return key_id, key_secret


def authenticate(engine: Engine, request: web.Request) -> Account:
    key_id, key_secret = basic_credentials(request.headers.get(hdrs.AUTHORIZATION))
    account = engine.ledger.authenticate(key_id, key_secret)
    if account is None:
        raise AuthFailed()
    return account


async def json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest("The request body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


async def apply_fault(engine: Engine, endpoint: str, when: str) -> None:
    fault = engine.faults.take(endpoint, when)
    if fault is None:
        return
    engine.changes.notify()
    if fault.mode == "delay":
        await asyncio.sleep(fault.delay_s)
        return
    if fault.mode == "timeout":
        # Hang until the client gives up (or the server shuts down), then answer as a gateway
        # timeout in case anyone is still listening.
        try:
            await asyncio.wait_for(engine.closing.wait(), fault.delay_s)
        except TimeoutError:
            pass
        raise ApiError(504, "The request timed out at the gateway.", code="GATEWAY_ERROR")
    status = int(fault.mode.removeprefix("error_"))
    raise ApiError(
        status,
        "The server encountered an error (injected by the test server).",
        code="SERVER_ERROR",
    )


def api(endpoint: str) -> Callable[[ApiHandler], Callable[[web.Request], Awaitable[web.Response]]]:
    def wrap(fn: ApiHandler) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            engine = request.app[ENGINE]
            try:
                await apply_fault(engine, endpoint, "before")
                account = authenticate(engine, request)
                result = await fn(engine, account, request)
                await apply_fault(engine, endpoint, "after")
            except ApiError as exc:
                return error_response(exc)
            return web.json_response(result)

        return handler

    return wrap


@api("qr_create")
async def create_qr(engine: Engine, account: Account, request: web.Request) -> dict[str, Any]:
    return engine.create_qr(account, await json_body(request))


@api("qr_get")
async def get_qr(engine: Engine, account: Account, request: web.Request) -> dict[str, Any]:
    return engine.ledger.qr_of(account, request.match_info["qr_id"]).to_api()


@api("qr_close")
async def close_qr(engine: Engine, account: Account, request: web.Request) -> dict[str, Any]:
    return engine.close_qr(account, request.match_info["qr_id"])


@api("qr_payments")
async def qr_payments(engine: Engine, account: Account, request: web.Request) -> dict[str, Any]:
    items = engine.ledger.qr_payments(account, request.match_info["qr_id"])
    return collection(page(items, request))


@api("payment_get")
async def get_payment(engine: Engine, account: Account, request: web.Request) -> dict[str, Any]:
    return engine.ledger.payment_of(account, request.match_info["payment_id"]).to_api()


@api("refund_create")
async def create_refund(engine: Engine, account: Account, request: web.Request) -> dict[str, Any]:
    return engine.create_refund(
        account,
        request.match_info["payment_id"],
        await json_body(request),
        request.headers.get("X-Refund-Idempotency"),
    )


@api("refund_get")
async def get_refund(engine: Engine, account: Account, request: web.Request) -> dict[str, Any]:
    refund = engine.ledger.refund_of(account, request.match_info["refund_id"])
    payment_id = request.match_info.get("payment_id")
    if payment_id is not None and refund.payment_id != payment_id:
        raise BadRequest("The refund does not belong to this payment.")
    return refund.to_api()


@api("refund_list")
async def payment_refunds(engine: Engine, account: Account, request: web.Request) -> dict[str, Any]:
    items = engine.ledger.payment_refunds(account, request.match_info["payment_id"])
    return collection(page(items, request))


def page(items: list[dict[str, Any]], request: web.Request) -> list[dict[str, Any]]:
    """Razorpay's ``count`` (1..100, default 10) and ``skip`` query parameters."""
    try:
        count = int(request.query.get("count", "10"))
        skip = int(request.query.get("skip", "0"))
    except ValueError as exc:
        raise BadRequest("count and skip must be integers.") from exc
    if not 1 <= count <= 100 or skip < 0:
        raise BadRequest("count must be between 1 and 100 and skip not negative.")
    return items[skip : skip + count]


@web.middleware
async def unknown_url(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Razorpay answers an unknown API URL with its envelope rather than an HTML 404."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        if not request.path.startswith("/v1/"):
            raise
        return error_response(BadRequest("The requested URL was not found on the server."))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/payments/qr_codes", create_qr)
    app.router.add_get("/v1/payments/qr_codes/{qr_id}", get_qr)
    app.router.add_post("/v1/payments/qr_codes/{qr_id}/close", close_qr)
    app.router.add_get("/v1/payments/qr_codes/{qr_id}/payments", qr_payments)
    app.router.add_get("/v1/payments/{payment_id}", get_payment)
    app.router.add_post("/v1/payments/{payment_id}/refund", create_refund)
    app.router.add_get("/v1/payments/{payment_id}/refunds", payment_refunds)
    app.router.add_get("/v1/payments/{payment_id}/refunds/{refund_id}", get_refund)
    app.router.add_get("/v1/refunds/{refund_id}", get_refund)
