"""``create_app``: the gateway's aiohttp application."""

from aiohttp import web

from edge.http import routes
from edge.http.envelope import error_middleware
from edge.http.guard import CreationRate
from edge.http.keys import CREATION_RATE, ENGINE, HEALTH, METRICS, SETTINGS, STORE, HealthProbe
from edge.metrics import GatewayMetrics
from edge.settings import GatewaySettings
from edge.store import GatewayStore
from edge.vending.engine import VendEngine

MAX_BODY = 64 * 1024


def create_app(
    settings: GatewaySettings,
    *,
    store: GatewayStore,
    engine: VendEngine,
    metrics: GatewayMetrics,
    health: HealthProbe,
) -> web.Application:
    """The store, engine and metrics are owned by ``edge.app.Gateway``, which starts them before
    the HTTP site and stops them after it."""
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY)
    app[SETTINGS] = settings
    app[STORE] = store
    app[ENGINE] = engine
    app[METRICS] = metrics
    app[HEALTH] = health
    app[CREATION_RATE] = CreationRate(settings.kiosk_orders_per_minute_per_client)
    routes.setup(app)
    return app
