"""Provider webhooks on the public listener (no JWT: the body's signature authenticates it).
See ``cloud.payments.webhooks`` for verification, dedupe and what each event does."""

from aiohttp import web

from cloud.http.registry import Api, Call
from cloud.models.refunds import WebhookAck
from cloud.payments.webhooks import (
    EVENT_ID_HEADER,
    MAX_BODY,
    SIGNATURE_HEADER,
    PayloadTooLarge,
    receive,
)

api = Api("/api/v1")

_CHUNK = 64 * 1024


async def _raw_body(request: web.Request) -> bytes:
    """The exact bytes received (the signature is over them), refused past ``MAX_BODY``
    without reading the rest."""
    too_large = PayloadTooLarge(f"a webhook body is at most {MAX_BODY} bytes; nothing was stored")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise too_large
    parts: list[bytes] = []
    size = 0
    while chunk := await request.content.read(_CHUNK):
        size += len(chunk)
        if size > MAX_BODY:
            raise too_large
        parts.append(chunk)
    return b"".join(parts)


@api.route(
    "POST",
    "/webhooks/razorpay/{tenant_id}",
    summary="Razorpay webhook for a tenant (X-Razorpay-Signature over the raw body)",
    tag="webhooks",
    response=WebhookAck,
    public=True,
    raw_body=True,
    errors=(413,),
)
async def razorpay_webhook(call: Call) -> WebhookAck:
    raw = await _raw_body(call.request)
    result = await receive(
        call.ctx,
        call.path("tenant_id"),
        raw,
        call.request.headers.get(SIGNATURE_HEADER),
        call.request.headers.get(EVENT_ID_HEADER),
    )
    return WebhookAck(event_id=result.event_id, outcome=result.outcome, duplicate=result.duplicate)
