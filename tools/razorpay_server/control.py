"""Test controls under ``/_test`` (no auth: the server binds loopback unless told otherwise):
accounts, paying a QR, faults, webhook misbehaviour, refund outcomes, state dumps, and the
human pages."""

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from tools.razorpay_server import page
from tools.razorpay_server.api import ENGINE, error_response, json_body
from tools.razorpay_server.engine import Engine
from tools.razorpay_server.entities import DEFAULT_EVENTS, Account
from tools.razorpay_server.errors import ApiError, ControlError

Control = Callable[[Engine, web.Request], Awaitable[Any]]


def control(fn: Control) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            result = await fn(request.app[ENGINE], request)
        except ApiError as exc:
            return error_response(exc)
        if isinstance(result, web.StreamResponse):
            return result
        return web.json_response(result)

    return handler


def _str(body: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise ControlError(f"{name} must be a non-empty string", field=name)
    return value


def _bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise ControlError(f"{name} must be true or false", field=name)
    return value


@control
async def put_account(engine: Engine, request: web.Request) -> dict[str, Any]:
    body = await json_body(request)
    events = body.get("events")
    if events is not None and (
        not isinstance(events, list) or not all(isinstance(e, str) for e in events)
    ):
        raise ControlError("events must be a list of event names", field="events")
    account = engine.put_account(
        Account(
            key_id=str(_str(body, "key_id")),
            key_secret=str(_str(body, "key_secret")),
            webhook_secret=str(_str(body, "webhook_secret")),
            webhook_url=_str(body, "webhook_url", required=False),
            events=frozenset(events) if events is not None else DEFAULT_EVENTS,
        )
    )
    return account.public()


@control
async def pay(engine: Engine, request: web.Request) -> Any:
    qr_id = request.match_info["qr_id"]
    if request.content_type == "application/x-www-form-urlencoded":
        # The Pay button of the human page: pay, then show the QR page with what happened.
        try:
            payment = engine.pay(qr_id)
            message = f"Paid ₹{payment['amount'] / 100:.2f} ({payment['id']}); webhooks sent."
        except ApiError as exc:
            message = exc.description
        qr = engine.ledger.qr_codes.get(qr_id)
        if qr is None:
            raise web.HTTPNotFound(text=message)
        return web.Response(text=page.qr_page(qr, message), content_type="text/html")
    body = await json_body(request)
    amount = body.get("amount")
    return engine.pay(
        qr_id,
        vpa=_str(body, "vpa", required=False),
        amount=amount,
        allow_closed=_bool(body, "allow_closed"),
        allow_amount_mismatch=_bool(body, "allow_amount_mismatch"),
        fail=_bool(body, "fail"),
    )


@control
async def expire_qr(engine: Engine, request: web.Request) -> dict[str, Any]:
    return engine.expire_qr(request.match_info["qr_id"])


@control
async def add_fault(engine: Engine, request: web.Request) -> dict[str, Any]:
    body = await json_body(request)
    delay = body.get("delay_s")
    if delay is not None and (isinstance(delay, bool) or not isinstance(delay, int | float)):
        raise ControlError("delay_s must be a number", field="delay_s")
    fault = engine.faults.add(
        str(_str(body, "endpoint")),
        str(_str(body, "mode")),
        count=body.get("count"),
        delay_s=delay,
        when=body.get("when", "before"),
    )
    return {"added": fault.public(), "faults": engine.faults.public()}


@control
async def list_faults(engine: Engine, request: web.Request) -> dict[str, Any]:
    return {"faults": engine.faults.public()}


@control
async def clear_faults(engine: Engine, request: web.Request) -> dict[str, Any]:
    return {"cleared": engine.faults.clear()}


@control
async def webhook_mode(engine: Engine, request: web.Request) -> dict[str, Any]:
    if request.method == "POST":
        engine.dispatcher.set_mode(await json_body(request))
    return vars(engine.dispatcher.mode)


@control
async def release(engine: Engine, request: web.Request) -> dict[str, Any]:
    return {"released": engine.dispatcher.release()}


@control
async def redeliver(engine: Engine, request: web.Request) -> dict[str, Any]:
    return engine.dispatcher.redeliver(request.match_info["event_id"]).public()


@control
async def deliveries(engine: Engine, request: web.Request) -> dict[str, Any]:
    items = [d.public() for d in engine.dispatcher.log.values()]
    event = request.query.get("event")
    if event:
        items = [d for d in items if d["event"] == event]
    return {"held": engine.dispatcher.held, "deliveries": items}


@control
async def fail_refund(engine: Engine, request: web.Request) -> dict[str, Any]:
    return engine.settle_refund(request.match_info["refund_id"], fail=True)


@control
async def process_refund(engine: Engine, request: web.Request) -> dict[str, Any]:
    return engine.settle_refund(request.match_info["refund_id"], fail=False)


@control
async def state(engine: Engine, request: web.Request) -> dict[str, Any]:
    return engine.ledger.snapshot() | {
        "faults": engine.faults.public(),
        "webhook_mode": vars(engine.dispatcher.mode),
        "webhooks_held": engine.dispatcher.held,
    }


@control
async def index_page(engine: Engine, request: web.Request) -> web.Response:
    engine.ledger.expire_due()
    qr_codes = list(engine.ledger.qr_codes.values())
    return web.Response(text=page.index(qr_codes), content_type="text/html")


@control
async def qr_page(engine: Engine, request: web.Request) -> web.Response:
    engine.ledger.expire_due()
    qr = engine.ledger.qr_codes.get(request.match_info["qr_id"])
    if qr is None:
        raise web.HTTPNotFound(text="No such QR code on this server.")
    return web.Response(text=page.qr_page(qr), content_type="text/html")


@control
async def qr_image(engine: Engine, request: web.Request) -> web.Response:
    qr = engine.ledger.qr_codes.get(request.match_info["qr_id"])
    if qr is None:
        raise web.HTTPNotFound(text="No such QR code on this server.")
    return web.Response(body=page.qr_svg(qr), content_type="image/svg+xml")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/_test/", index_page)
    r.add_get("/_test", index_page)
    r.add_post("/_test/accounts", put_account)
    r.add_get("/_test/qr_codes/{qr_id}", qr_page)
    r.add_get("/_test/qr_codes/{qr_id}/image.svg", qr_image)
    r.add_post("/_test/qr_codes/{qr_id}/pay", pay)
    r.add_post("/_test/qr_codes/{qr_id}/expire", expire_qr)
    r.add_get("/_test/faults", list_faults)
    r.add_post("/_test/faults", add_fault)
    r.add_delete("/_test/faults", clear_faults)
    r.add_get("/_test/webhooks", deliveries)
    r.add_get("/_test/webhooks/mode", webhook_mode)
    r.add_post("/_test/webhooks/mode", webhook_mode)
    r.add_post("/_test/webhooks/release", release)
    r.add_post("/_test/webhooks/redeliver/{event_id}", redeliver)
    r.add_post("/_test/refunds/{refund_id}/fail", fail_refund)
    r.add_post("/_test/refunds/{refund_id}/process", process_refund)
    r.add_get("/_test/state", state)
