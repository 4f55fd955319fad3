"""The public API application (``create_app``) and the mTLS sync application that shares its
context (``create_sync_app``)."""

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.auth.keys import KeySource
from cloud.auth.passwords import Passwords
from cloud.auth.tokens import AccessTokens
from cloud.context import CHANNELS, CONTEXT, SETTINGS, CloudContext
from cloud.db import sealed
from cloud.db.engine import create_engine
from cloud.db.migrate import upgrade
from cloud.errors import ConfigurationError
from cloud.http.middleware import envelope_middleware
from cloud.http.openapi import build_openapi
from cloud.http.registry import Api, Endpoint
from cloud.payments.closer import run_close_worker
from cloud.payments.poller import run_poll_worker
from cloud.payments.refunds import run_refund_worker
from cloud.payments.registry import ProviderRegistry
from cloud.payments.sandbox import SandboxProvider, run_capture_worker
from cloud.payments.webhooks import REJECTIONS as webhook_rejections
from cloud.pki import CertificateAuthority
from cloud.routes import (
    auth,
    claims,
    gateways,
    machines,
    orders,
    payment_settings,
    refunds,
    reports,
    sites,
    users,
    webhooks,
)
from cloud.settings import CloudSettings
from cloud.storage import prepare_storage
from cloud.sync import channel, dead_letter_routes
from cloud.sync import routes as sync_routes
from cloud.sync.hub import ChannelHub
from contracts.sealing import SealingError

API_VERSION = "0.1.0"
PUBLIC_APIS: tuple[Api, ...] = (
    auth.api,
    users.api,
    sites.api,
    gateways.api,
    machines.api,
    orders.api,
    claims.api,
    dead_letter_routes.api,
    payment_settings.api,
    refunds.api,
    webhooks.api,
    reports.api,
)
SYNC_APIS: tuple[Api, ...] = (sync_routes.api, channel.api)
OPENAPI = web.AppKey("openapi", dict)


def public_endpoints() -> list[Endpoint]:
    return [ep for api in PUBLIC_APIS for ep in api.endpoints]


async def _context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    prepare_storage(settings)
    engine = create_engine(settings.database_url)
    try:
        await upgrade(engine)
        keyed = await _sealing_engine(settings, engine)
        sandbox = SandboxProvider(settings.sandbox_approve_delay_s, settings.payment_expiry_s)
        app[CONTEXT] = CloudContext(
            settings=settings,
            engine=keyed,
            passwords=Passwords.from_settings(settings),
            access_tokens=AccessTokens(KeySource(settings), settings.access_token_ttl_s),
            ca=await asyncio.to_thread(CertificateAuthority.load_or_create, settings.data_dir),
            hub=ChannelHub(),
            payments=sandbox,
            providers=ProviderRegistry(settings, sandbox),
            sync_url=settings.sync_public_url
            or f"https://{settings.sync_host}:{settings.sync_port}",
        )
        yield
    finally:
        if CONTEXT in app:
            app[CONTEXT].passwords.close()
            await app[CONTEXT].providers.aclose()
        await engine.dispose()


async def _sealing_engine(settings: CloudSettings, engine: AsyncEngine) -> AsyncEngine:
    """The engine carrying the master keys; checks them against the database and seals rows
    left in plaintext by earlier versions before anything is served."""
    try:
        ring = settings.key_ring()
    except SealingError as exc:
        raise ConfigurationError(f"master keys: {exc}") from exc
    keyed = sealed.with_keys(engine, ring)
    await sealed.seal_plaintext(keyed)
    return keyed


async def _workers(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CONTEXT]
    tasks = [
        asyncio.create_task(
            run_capture_worker(ctx.engine, ctx.hub, ctx.settings.worker_poll_interval_s),
            name="sandbox-capture",
        ),
        asyncio.create_task(run_close_worker(ctx), name="provider-qr-close"),
        asyncio.create_task(run_poll_worker(ctx), name="provider-poll"),
        asyncio.create_task(run_refund_worker(ctx), name="refunds"),
    ]
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _health(request: web.Request) -> web.Response:
    """Liveness plus how many tenants' payment-provider breakers are in each state, and how
    many webhook deliveries were refused. Unauthenticated, so it names no tenant: which tenant
    exists and whose payments are failing is for that tenant's admins
    (``GET /api/v1/payments/provider`` shows their own breaker)."""
    breakers = request.app[CONTEXT].providers.breakers()
    states = [str(b["state"]) for b in breakers.values()]
    return web.json_response(
        {
            "status": "ok",
            "payment_providers": {
                "open": states.count("open"),
                "half_open": states.count("half_open"),
                "closed": states.count("closed"),
            },
            "webhooks_refused_total": webhook_rejections.total,
        }
    )


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])


async def _not_found(request: web.Request) -> web.Response:
    raise web.HTTPNotFound(reason=f"no route for {request.method} {request.path}")


def create_app(settings: CloudSettings) -> web.Application:
    app = web.Application(middlewares=[envelope_middleware], client_max_size=1024 * 1024)
    app[SETTINGS] = settings
    app[OPENAPI] = build_openapi(public_endpoints(), "Vending fleet cloud API", API_VERSION)
    app.cleanup_ctx.append(_context)
    app.cleanup_ctx.append(_workers)
    for api in PUBLIC_APIS:
        api.register(app)
    app.router.add_get("/api/v1/openapi.json", _openapi)
    app.router.add_get("/health", _health)
    return app


async def _close_channels(app: web.Application) -> None:
    channels = app[CHANNELS]
    for ws in [*channels]:
        await ws.close(code=1001, message=b"server shutting down")


def create_sync_app(ctx: CloudContext) -> web.Application:
    """The mTLS listener's application; runs next to ``create_app``'s and shares its context."""
    app = web.Application(middlewares=[envelope_middleware], client_max_size=4 * 1024 * 1024)
    app[SETTINGS] = ctx.settings
    app[CONTEXT] = ctx
    channels: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
    app[CHANNELS] = channels
    app.on_shutdown.append(_close_channels)
    for api in SYNC_APIS:
        api.register(app)
    return app
