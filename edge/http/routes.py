"""Kiosk API routes (``/api/v1``), ``/health`` and ``/metrics`` (page: ``kiosk_page``).

``ROUTES`` is the one table of them: ``setup`` registers it and ``GET /api/v1/openapi.json``
describes it (``edge.http.openapi``), with the models the handlers validate and answer with."""

import asyncio
import json
import re
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from contracts.orders import TERMINAL_ORDER_STATUSES
from edge.errors import (
    ClientLimitExceeded,
    MachineBusy,
    OrderTokenInvalid,
    OrderTokenRequired,
    OrderTooLarge,
)
from edge.http import keys, kiosk_page
from edge.http.envelope import ApiError, ok, path_param
from edge.http.guard import client_key, new_order_token, presented_token_hash
from edge.http.openapi import KioskRoute, build_kiosk_openapi
from edge.http.schemas import (
    IDEMPOTENCY_KEY_PATTERN,
    CreatedOrder,
    CreateOrderRequest,
    HealthReport,
    MachinePaymentMethods,
    PaymentMethodOption,
    PublicMachine,
    PublicOrder,
)
from edge.store.views import (
    CatalogItemView,
    ClientLimits,
    OrderCapability,
    OrderView,
)

API = "/api/v1"
SSE_KEEPALIVE_S = 15.0
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
OPENAPI: web.AppKey[dict[str, Any]] = web.AppKey("openapi", dict)


def _order_json(order: OrderView) -> dict[str, Any]:
    return PublicOrder.model_validate(order).model_dump(mode="json")


async def _payment_methods(request: web.Request, machine_id: str) -> list[PaymentMethodOption]:
    methods = await request.app[keys.ENGINE].payment_methods(machine_id)
    return [PaymentMethodOption.model_validate(m) for m in methods]


async def list_machines(request: web.Request) -> web.Response:
    store = request.app[keys.STORE]
    listed = []
    for machine in await store.list_machines():
        catalog = await store.catalog(machine.id)
        # A machine sells in one currency (its catalog's); INR is the contract's default.
        currency = catalog[0].currency if catalog else "INR"
        listed.append(
            PublicMachine(
                **machine.model_dump(),
                payment_methods=await _payment_methods(request, machine.id),
                machine_credit=await store.machine_credit(machine.id, currency),
                currency=currency,
            )
        )
    return ok([m.model_dump(mode="json") for m in listed])


async def machine_payment_methods(request: web.Request) -> web.Response:
    """Asked by the kiosk before it offers UPI, and again after a payment_unavailable."""
    machine_id = path_param(request, "machine_id")
    if not await request.app[keys.STORE].machine_exists(machine_id):
        raise ApiError(404, "machine_not_found", f"no active machine {machine_id!r}")
    methods = await _payment_methods(request, machine_id)
    data = MachinePaymentMethods(machine_id=machine_id, payment_methods=methods)
    return ok(data.model_dump(mode="json"))


async def machine_catalog(request: web.Request) -> web.Response:
    store = request.app[keys.STORE]
    machine_id = path_param(request, "machine_id")
    if not await store.machine_exists(machine_id):
        raise ApiError(404, "machine_not_found", f"no active machine {machine_id!r}")
    items = await store.catalog(machine_id)
    return ok([item.model_dump(mode="json") for item in items])


async def _json_body(request: web.Request) -> Any:
    try:
        return json.loads(await request.text(), parse_constant=_no_constants)
    # ValueError covers over-long integer literals, RecursionError absurd nesting.
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError(400, "malformed_json", "request body is not valid JSON") from exc


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _count_refusal(request: web.Request, exc: Exception) -> None:
    match exc:
        case ClientLimitExceeded():
            reason = exc.reason
        case OrderTooLarge():
            reason = "order_too_large"
        case MachineBusy():
            reason = "machine_busy"
        case OrderTokenRequired():
            reason = "order_token_required"
        case OrderTokenInvalid():
            reason = "order_token_invalid"
        case _:
            return
    request.app[keys.METRICS].kiosk_refused.labels(reason=reason).inc()


async def create_order(request: web.Request) -> web.Response:
    try:
        return await _create_order(request)
    except Exception as exc:
        _count_refusal(request, exc)
        raise


async def _create_order(request: web.Request) -> web.Response:
    client = client_key(request)
    request.app[keys.CREATION_RATE].check(client)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _IDEMPOTENCY_KEY.match(key):
        raise ApiError(
            400, "invalid_idempotency_key", "Idempotency-Key must be 8-128 of [A-Za-z0-9_.:-]"
        )
    body = await _json_body(request)
    try:
        parsed = CreateOrderRequest.model_validate(body)
    except ValidationError as exc:
        raise ApiError(
            400,
            "validation_error",
            "request validation failed",
            exc.errors(include_url=False, include_context=False, include_input=False),
        ) from exc
    settings = request.app[keys.SETTINGS]
    token, token_hash = new_order_token()
    capability = OrderCapability(
        token_hash=token_hash,
        presented_hash=presented_token_hash(request),
        limits=ClientLimits(
            client=client,
            max_open_orders=settings.kiosk_max_open_orders_per_client,
            max_reserved_units=settings.kiosk_max_reserved_units_per_client,
            payment_timeout_s=settings.order_payment_timeout_s,
        ),
    )
    engine = request.app[keys.ENGINE]
    order, created = await engine.create_order(
        parsed.to_new_order(), key, parsed.fingerprint(), capability
    )
    data = _order_json(order) | {"order_token": token}
    return ok(CreatedOrder.model_validate(data).model_dump(mode="json"), 201 if created else 200)


async def get_order(request: web.Request) -> web.Response:
    order = await request.app[keys.STORE].get_order(path_param(request, "order_id"))
    return ok(_order_json(order))


async def cancel_order(request: web.Request) -> web.Response:
    order_id = path_param(request, "order_id")
    try:
        order = await request.app[keys.ENGINE].cancel_with_token(
            order_id, presented_token_hash(request)
        )
    except Exception as exc:
        _count_refusal(request, exc)
        raise
    return ok(_order_json(order))


async def order_events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: the full order on connect and after every change; ends once the
    order is in a terminal state."""
    store = request.app[keys.STORE]
    order_id = path_param(request, "order_id")
    order = await store.get_order(order_id)  # 404 before the stream starts
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    sent_version = -1
    streams = request.app[keys.STREAMS]
    task = asyncio.current_task()
    assert task is not None
    streams.add(task)
    try:
        while True:
            seen = store.changes.order_seq(order_id)
            order = await store.get_order(order_id)
            if order.version != sent_version:
                data = json.dumps(_order_json(order), separators=(",", ":"))
                await response.write(
                    f"event: order\nid: {order.version}\ndata: {data}\n\n".encode()
                )
                sent_version = order.version
            if order.status in TERMINAL_ORDER_STATUSES:
                break
            if await store.changes.wait_order(order_id, seen, SSE_KEEPALIVE_S) == seen:
                await response.write(b": keepalive\n\n")
    except (ConnectionResetError, asyncio.CancelledError):
        return response
    finally:
        streams.discard(task)
    await response.write_eof()
    return response


async def _end_streams(app: web.Application) -> None:
    streams = app[keys.STREAMS]
    for task in tuple(streams):
        task.cancel()


async def health(request: web.Request) -> web.Response:
    return ok(await request.app[keys.HEALTH]())


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[keys.METRICS]
    report = await request.app[keys.HEALTH]()
    registry.outbox_backlog.set(report.get("store", {}).get("outbox_backlog", 0))
    devices = report.get("devices", {})
    for state in ("online", "offline"):
        registry.devices.labels(state=state).set(devices.get(state, 0))
    return web.Response(body=registry.render(), content_type="text/plain", charset="utf-8")


_ORDERS = "orders"
_SITE = "site"
# 503: the store cannot be read or written (disk full, database error).
ROUTES: list[KioskRoute] = [
    KioskRoute("GET", f"{API}/machines", list_machines,
               "Active machines at this site, each with the payment methods that work there now "
               "(cash always; upi only while the tenant has it, the cloud link is up and the "
               "payments circuit breaker is closed)", _SITE,
               response=PublicMachine, many=True, errors=(503,)),
    KioskRoute("GET", f"{API}/machines/{{machine_id}}/catalog", machine_catalog,
               "A machine's catalog: slot, name, price, quantity available, category, image; a "
               "disabled slot (enabled false: out of service) cannot be ordered",
               _SITE, response=CatalogItemView, many=True, errors=(503,)),
    KioskRoute("GET", f"{API}/machines/{{machine_id}}/payment-methods", machine_payment_methods,
               "The payment methods that work at a machine now, and why one does not", _SITE,
               response=MachinePaymentMethods, errors=(503,)),
    KioskRoute("POST", f"{API}/orders", create_order,
               "Create an order (201; 200 when an Idempotency-Key replays an earlier one). The "
               "answer carries the order's secret order_token, needed to cancel it or to "
               "replace it with a new cash order (X-Order-Token)",
               _ORDERS, body=CreateOrderRequest, response=CreatedOrder, statuses=(201, 200),
               # 400 also for an item this machine does not sell (unknown_item); 404 unknown
               # machine; 409 stock, disabled slot (slot_disabled), machine busy (another
               # customer's cash order, or one being paid), order over the per-client units,
               # Idempotency-Key reuse; 413 body over 64 KiB; 429 per-client limits; 503
               # payment_unavailable (no cloud link, payments breaker open, no UPI for the
               # tenant: the order is cancelled, nothing charged, pay with cash) or store.
               errors=(400, 404, 409, 413, 429, 503), idempotency_key=True,
               order_token="replace"),
    KioskRoute("GET", f"{API}/orders/{{order_id}}", get_order, "An order and its items",
               _ORDERS, response=PublicOrder, errors=(503,)),
    KioskRoute("GET", f"{API}/orders/{{order_id}}/events", order_events,
               "Server-Sent Events: `event: order` with the order's JSON on connect and after "
               "every change, until the order is terminal", _ORDERS,
               media_type="text/event-stream", media_schema={"type": "string"}, errors=(503,)),
    KioskRoute("POST", f"{API}/orders/{{order_id}}/cancel", cancel_order,
               "Cancel an order that is not yet paid; needs the order's X-Order-Token (403 "
               "order_token_required or order_token_invalid without it)", _ORDERS,
               response=PublicOrder, errors=(403, 409, 503), order_token="require"),
    KioskRoute("GET", f"{API}/openapi.json", openapi, "This document", "meta",
               media_type="application/json", media_schema={"type": "object"}),
    KioskRoute("GET", "/health", health,
               "Gateway health: status ok or degraded, with the store, broker, cloud link and "
               "devices", "meta", response=HealthReport),
    KioskRoute("GET", "/metrics", metrics, "Prometheus metrics", "meta",
               media_type="text/plain", media_schema={"type": "string"}),
    KioskRoute("GET", kiosk_page.KIOSK_PATH, kiosk_page.kiosk_page, "The kiosk page", "page",
               media_type="text/html", media_schema={"type": "string"}),
    KioskRoute("GET", f"{kiosk_page.KIOSK_PATH}/orders/{{order_id}}/qr.svg",
               kiosk_page.payment_qr,
               "The QR code of an order's UPI payment (its upi_uri, or the sandbox qr_payload)",
               "page",
               media_type="image/svg+xml", media_schema={"type": "string"},
               # 502: the provider's QR payload is too long to draw.
               errors=(502, 503)),
]  # fmt: skip


def setup(app: web.Application) -> None:
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
    app[OPENAPI] = build_kiosk_openapi(ROUTES)
    kiosk_page.setup(app)
    app[keys.STREAMS] = set()
    app.on_shutdown.append(_end_streams)
