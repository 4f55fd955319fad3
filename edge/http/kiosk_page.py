"""The kiosk page: ``/kiosk`` (``/`` redirects there), its assets under ``/static/``, and the
QR code of an order's UPI payment (its UPI URI), rendered here so the page needs nothing from
outside the gateway. Only when the provider gives no URI does the page show the provider's
hosted QR image (``image_url``): the one thing it may load from elsewhere (``img-src https:``)."""

import io
from pathlib import Path

import segno
from aiohttp import web

from edge.http import keys
from edge.http.envelope import ApiError, path_param

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
KIOSK_PATH = "/kiosk"
STATIC_PREFIX = "/static"
MAX_QR_PAYLOAD = 1024

# The page is ours alone: scripts, styles and requests only from the gateway, never framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: https:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


async def kiosk_root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(request.rel_url.with_path(KIOSK_PATH).with_query(request.query))


async def kiosk_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(
        STATIC_DIR / "kiosk.html",
        headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


async def payment_qr(request: web.Request) -> web.Response:
    order = await request.app[keys.STORE].get_order(path_param(request, "order_id"))
    payment = order.payment
    payload = (payment.upi_uri or payment.qr_payload) if payment else None
    if not payload:
        raise ApiError(404, "no_qr_payload", "this order has no payment QR code")
    if len(payload) > MAX_QR_PAYLOAD:
        raise ApiError(502, "qr_payload_too_long", "the payment QR payload is too long to draw")
    buffer = io.BytesIO()
    segno.make(payload, error="m").save(buffer, kind="svg", scale=6, border=4, xmldecl=False)
    return web.Response(
        body=buffer.getvalue(),
        content_type="image/svg+xml",
        headers={"Cache-Control": "private, max-age=300"},
    )


def setup(app: web.Application) -> None:
    """The redirect and the static files; the page and the QR code are in routes.ROUTES."""
    app.router.add_get("/", kiosk_root)
    app.router.add_static(STATIC_PREFIX, STATIC_DIR, follow_symlinks=False)
