"""The push channel: a WebSocket the gateway opens over mTLS. Every unacknowledged message for
the gateway is sent (oldest first) at connect, then new ones as they are queued; a message is
done only when the gateway acks it, so anything unacked is sent again on the next connection."""

import asyncio
import contextlib
import logging

from aiohttp import WSCloseCode, WSMsgType, web
from pydantic import ValidationError

from cloud.context import CHANNELS, CloudContext
from cloud.http.registry import Api, Call
from cloud.sync import outbox
from cloud.sync.identity import Gateway, authenticate_gateway, gateway_active
from contracts.sync import SYNC_PREFIX, ChannelAck

log = logging.getLogger(__name__)

api = Api(SYNC_PREFIX)


async def _sender(
    ws: web.WebSocketResponse,
    ctx: CloudContext,
    gateway: Gateway,
    wake: asyncio.Event,
    sent: set[str],
) -> None:
    interval = ctx.settings.channel_poll_interval_s
    while not ws.closed:
        wake.clear()
        async with ctx.engine.connect() as conn:
            # A revoked gateway must not keep a channel it opened while still active.
            if not await gateway_active(conn, gateway.id):
                log.info("gateway %s is no longer active; closing its channel", gateway.id)
                await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"gateway revoked")
                return
            messages = await outbox.pending(conn, gateway.id, sent)
        for message in messages:
            await ws.send_str(message.model_dump_json())
            sent.add(message.id)
        if messages:
            continue
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await wake.wait()


async def _receiver(
    ws: web.WebSocketResponse, ctx: CloudContext, gateway: Gateway, sent: set[str]
) -> None:
    async for msg in ws:
        if msg.type != WSMsgType.TEXT:
            continue
        try:
            ack = ChannelAck.model_validate_json(msg.data)
        except ValidationError:
            log.warning("gateway %s sent an unreadable channel frame", gateway.id)
            continue
        async with ctx.engine.begin() as conn:
            await outbox.acknowledge(conn, gateway.id, ack.id)
        # Only after the commit, so the sender cannot pick it up again in between.
        sent.discard(ack.id)


@api.route("GET", "/channel", summary="Push channel (WebSocket)", tag="sync", public=True)
async def channel(call: Call) -> web.StreamResponse:
    ctx = call.ctx
    gateway = await authenticate_gateway(call.request, ctx)
    ws = web.WebSocketResponse(heartbeat=ctx.settings.channel_heartbeat_s)
    await ws.prepare(call.request)
    call.request.app[CHANNELS].add(ws)
    wake = ctx.hub.subscribe(gateway.id)
    sent: set[str] = set()  # sent on this connection and not yet acked
    try:
        async with asyncio.TaskGroup() as tasks:
            receiver = tasks.create_task(
                _receiver(ws, ctx, gateway, sent), name=f"channel-rx-{gateway.id}"
            )
            sender = tasks.create_task(
                _sender(ws, ctx, gateway, wake, sent), name=f"channel-tx-{gateway.id}"
            )
            await asyncio.wait([receiver, sender], return_when=asyncio.FIRST_COMPLETED)
            receiver.cancel()
            sender.cancel()
    except* (ConnectionResetError, RuntimeError) as exc:
        log.info("channel to gateway %s closed: %s", gateway.id, exc.exceptions[0])
    except* Exception:
        # The socket is already upgraded, so no envelope can be sent; the gateway reconnects
        # and gets every unacked message again.
        log.exception("channel to gateway %s failed", gateway.id)
    finally:
        ctx.hub.unsubscribe(gateway.id, wake)
        await ws.close()
    return ws
