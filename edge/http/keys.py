"""Typed keys of the gateway's aiohttp application."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from edge.http.guard import CreationRate
from edge.metrics import GatewayMetrics
from edge.settings import GatewaySettings
from edge.store import GatewayStore
from edge.vending.engine import VendEngine

HealthProbe = Callable[[], Awaitable[dict[str, Any]]]

SETTINGS = web.AppKey("settings", GatewaySettings)
STORE = web.AppKey("store", GatewayStore)
ENGINE = web.AppKey("engine", VendEngine)
METRICS = web.AppKey("metrics", GatewayMetrics)
HEALTH: web.AppKey[HealthProbe] = web.AppKey("health")
# Open order-event streams, ended at shutdown rather than waited for.
STREAMS: web.AppKey[set[asyncio.Task[Any]]] = web.AppKey("streams")
# Order creations per client in the last minute (edge.http.guard).
CREATION_RATE = web.AppKey("creation_rate", CreationRate)
