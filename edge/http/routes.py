"""Kiosk API routes (``/api/v1``), ``/health`` and ``/metrics`` (page: ``kiosk_page``)."""

import asyncio
import json
import re
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from contracts.orders import TERMINAL_ORDER_STATUSES
from edge.http import keys, kiosk_page
from edge.http.envelope import ApiError, ok
from edge.http.schemas import IDEMPOTENCY_KEY_PATTERN, CreateOrderRequest

API = "/api/v1"
SSE_KEEPALIVE_S = 15.0
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


async def list_machines(request: web.Request) -> web.Response:
    machines = await request.app[keys.STORE].list_machines()
    return ok([m.model_dump(mode="json") for m in machines])


async def machine_catalog(request: web.Request) -> web.Response:
    store = request.app[keys.STORE]
    machine_id = request.match_info["machine_id"]
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


async def create_order(request: web.Request) -> web.Response:
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
    engine = request.app[keys.ENGINE]
    order, created = await engine.create_order(parsed.to_new_order(), key, parsed.fingerprint())
    return ok(order.public(), status=201 if created else 200)


async def get_order(request: web.Request) -> web.Response:
    order = await request.app[keys.STORE].get_order(request.match_info["order_id"])
    return ok(order.public())


async def cancel_order(request: web.Request) -> web.Response:
    order = await request.app[keys.ENGINE].cancel(request.match_info["order_id"])
    return ok(order.public())


async def order_events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: the full order on connect and after every change; ends once the
    order is in a terminal state."""
    store = request.app[keys.STORE]
    order_id = request.match_info["order_id"]
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
                data = json.dumps(order.public(), separators=(",", ":"))
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


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[keys.METRICS]
    report = await request.app[keys.HEALTH]()
    registry.outbox_backlog.set(report.get("store", {}).get("outbox_backlog", 0))
    devices = report.get("devices", {})
    for state in ("online", "offline"):
        registry.devices.labels(state=state).set(devices.get(state, 0))
    return web.Response(body=registry.render(), content_type="text/plain", charset="utf-8")


def setup(app: web.Application) -> None:
    app.router.add_get(f"{API}/machines", list_machines)
    app.router.add_get(f"{API}/machines/{{machine_id}}/catalog", machine_catalog)
    app.router.add_post(f"{API}/orders", create_order)
    app.router.add_get(f"{API}/orders/{{order_id}}", get_order)
    app.router.add_get(f"{API}/orders/{{order_id}}/events", order_events)
    app.router.add_post(f"{API}/orders/{{order_id}}/cancel", cancel_order)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    kiosk_page.setup(app)
    app[keys.STREAMS] = set()
    app.on_shutdown.append(_end_streams)
