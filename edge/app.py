"""``Gateway``: one site's gateway process, composed of its parts.

Start order: store -> broker -> device link -> cloud link -> vend engine -> HTTP -> zeroconf;
stop order is the reverse (an ``AsyncExitStack``), so nothing outlives what it depends on.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from edge.broker import EmbeddedBroker
from edge.broker.plugins import BrokerAuthority
from edge.devices.link import DeviceLink
from edge.discovery import Announcement
from edge.errors import GatewayError
from edge.http import create_app
from edge.http.routes import API
from edge.metrics import BREAKER_STATE_VALUES, GatewayMetrics
from edge.settings import GatewaySettings
from edge.store import GatewayStore
from edge.sync.ports import PaymentsPort
from edge.vending.engine import VendEngine

log = logging.getLogger(__name__)

try:
    from edge.sync.client import CloudLink
except ImportError:  # the cloud link is optional for a standalone (cash-only) gateway
    CloudLink = None  # type: ignore[assignment,misc]


class Gateway:
    def __init__(
        self,
        settings: GatewaySettings,
        *,
        payments: PaymentsPort | None = None,
        breaker_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``payments`` replaces the cloud link as the payment port (tests, tools); by default
        the ``CloudLink`` is used when ``settings.cloud_url`` is set. ``breaker_clock`` drives
        the payments breaker's recovery (tests step it instead of waiting)."""
        self.settings = settings
        self._payments_override = payments
        self._breaker_clock = breaker_clock
        self.metrics = GatewayMetrics()
        self.store = GatewayStore(settings)
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []
        self._broker: EmbeddedBroker | None = None
        self._link: DeviceLink | None = None
        self._engine: VendEngine | None = None
        self._cloud: Any = None
        self._announcement: Announcement | None = None
        self._http_port = 0
        self.mqtt_port = 0

    # --- what tests and tools use --------------------------------------------------------------

    @property
    def http_url(self) -> str:
        host = self.settings.http_host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        return f"http://{host}:{self._http_port}"

    @property
    def link(self) -> DeviceLink:
        if self._link is None:
            raise GatewayError("gateway is not running")
        return self._link

    @property
    def engine(self) -> VendEngine:
        if self._engine is None:
            raise GatewayError("gateway is not running")
        return self._engine

    @property
    def cloud(self) -> Any:
        """The ``CloudLink`` when ``cloud_url`` is set, else None."""
        return self._cloud

    # --- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> "Gateway":
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _start(self) -> None:
        settings = self.settings
        stack = self._stack
        await stack.enter_async_context(self.store)

        if settings.external_broker_url:
            broker_url = settings.external_broker_url
            self.mqtt_port = urlsplit(broker_url).port or 1883
        else:
            authority = BrokerAuthority(
                gateway_client_id=settings.gateway_client_id,
                gateway_password=settings.mqtt_password,
                secret_hash=self.store.machine_secret_hash,
            )
            self._broker = await stack.enter_async_context(
                EmbeddedBroker(settings, authority, self.metrics)
            )
            self.mqtt_port = self._broker.port
            host = "127.0.0.1" if settings.mqtt_host in ("0.0.0.0", "") else settings.mqtt_host
            broker_url = f"mqtt://{host}:{self.mqtt_port}"

        self._link = await stack.enter_async_context(
            DeviceLink(settings, self.store, self.metrics, broker_url)
        )

        payments: PaymentsPort | None = self._payments_override
        payments_ready = None
        if settings.cloud_url:
            if CloudLink is None:
                raise GatewayError("cloud_url is set but the cloud link is not installed")
            self._cloud = await stack.enter_async_context(
                CloudLink(settings, self.store, self.metrics)
            )
            if payments is None:
                payments = self._cloud
                # Before enrolment there is nobody to ask: "offline", not a breaker failure.
                cloud = self._cloud
                payments_ready = lambda: bool(cloud.status().get("enrolled"))  # noqa: E731

        self._engine = VendEngine(
            settings,
            self.store,
            self._link,
            payments,
            self.metrics,
            payments_ready=payments_ready,
            breaker_clock=self._breaker_clock,
        )
        group = await stack.enter_async_context(asyncio.TaskGroup())
        stack.push_async_callback(self._cancel_tasks)  # runs before the group waits
        self._tasks.append(group.create_task(self._engine.run(), name="vend-engine"))

        app = create_app(
            settings,
            store=self.store,
            engine=self._engine,
            metrics=self.metrics,
            health=self.health,
        )
        runner = web.AppRunner(app, shutdown_timeout=2.0, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, settings.http_host, settings.http_port)
        await site.start()
        self._http_port = int(runner.addresses[0][1])
        log.info("kiosk API on %s%s", self.http_url, API)

        if settings.zeroconf_enabled:
            self._announcement = await stack.enter_async_context(
                Announcement(
                    name=settings.gateway_name,
                    site=settings.site_name,
                    host=settings.http_host,
                    http_port=self._http_port,
                    mqtt_port=self.mqtt_port,
                    api_path=API,
                )
            )

    async def _cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()
        self._link = self._engine = self._broker = None

    # --- health --------------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        try:
            backlog, devices, dead = await self.store.health_counts()
            store_ok = True
        except Exception:
            store_ok, backlog, devices, dead = False, -1, {"online": 0, "offline": 0}, 0
        link_ok = self._link is not None and self._link.connected
        broker_running = self._broker.running if self._broker is not None else None
        cloud = self._cloud.status() if self._cloud is not None else {"configured": False}
        breakers = self._breakers()
        # While the payments breaker is not closed UPI is refused (cash still sells).
        payments_ok = all(b["state"] == "closed" for b in breakers.values())
        healthy = store_ok and link_ok and broker_running is not False and dead == 0 and payments_ok
        self.metrics.dead_letters.set(dead)
        return {
            "status": "ok" if healthy else "degraded",
            "breakers": breakers,
            # Events the cloud refused, and payment confirmations this gateway could not apply,
            # sit aside until someone looks at them.
            "dead_letters": {
                "count": dead,
                "reason": (
                    f"{dead} dead letter(s) (sync events the cloud refused, or payment "
                    "confirmations this gateway could not apply): vending-gateway dead-letters list"
                    if dead
                    else None
                ),
            },
            "broker": {
                "mode": "external" if self.settings.external_broker_url else "embedded",
                "port": self.mqtt_port,
                "running": broker_running,
                "link_connected": link_ok,
            },
            "store": {"ok": store_ok, "outbox_backlog": backlog},
            "cloud": cloud,
            "devices": devices,
            "zeroconf": self._announcement.active if self._announcement else False,
        }

    def _breakers(self) -> dict[str, dict[str, object]]:
        engine = self._engine
        if engine is None:
            return {}
        snapshots = {b.name: b.snapshot() for b in engine.breakers}
        for name, snap in snapshots.items():
            # The open -> half_open step is time-based: refresh the gauge from what is true now.
            self.metrics.breaker_state.labels(breaker=name).set(
                BREAKER_STATE_VALUES[str(snap["state"])]
            )
        return snapshots
