"""Running the cloud: the public HTTP listener and the mTLS sync listener in one process."""

import logging
from types import TracebackType

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.app import create_app, create_sync_app
from cloud.bootstrap import create_tenant_with_admin
from cloud.context import CONTEXT, CloudContext
from cloud.settings import CloudSettings

log = logging.getLogger(__name__)


def _bound_port(runner: web.AppRunner) -> int:
    return int(runner.addresses[0][1])


def _url(scheme: str, host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


class CloudServer:
    """``async with CloudServer(settings) as server``: both listeners up, ``api_url`` and
    ``sync_url`` known (ports may be 0 in the settings)."""

    def __init__(self, settings: CloudSettings) -> None:
        self.settings = settings
        self._api_runner: web.AppRunner | None = None
        self._sync_runner: web.AppRunner | None = None
        self.api_url = ""
        self.sync_url = ""

    @property
    def context(self) -> CloudContext:
        if self._api_runner is None:
            raise RuntimeError("server not started")
        return self._api_runner.app[CONTEXT]

    @property
    def engine(self) -> AsyncEngine:
        return self.context.engine

    @property
    def ca_pem(self) -> str:
        return self.context.ca.cert_pem

    async def create_tenant(self, name: str, admin_email: str, admin_password: str) -> str:
        """Tenant plus admin user (argon2 cost from the settings); returns the tenant id."""
        return await create_tenant_with_admin(
            self.engine, name, admin_email, admin_password, passwords=self.context.passwords
        )

    async def start(self) -> None:
        settings = self.settings
        self._api_runner = web.AppRunner(create_app(settings), access_log=None, shutdown_timeout=2)
        await self._api_runner.setup()
        try:
            ctx = self.context
            api_site = web.TCPSite(self._api_runner, settings.http_host, settings.http_port)
            await api_site.start()
            self.api_url = _url("http", settings.http_host, _bound_port(self._api_runner))

            ssl_context = ctx.ca.server_ssl_context(settings.server_hostnames)
            self._sync_runner = web.AppRunner(
                create_sync_app(ctx), access_log=None, shutdown_timeout=2
            )
            await self._sync_runner.setup()
            sync_site = web.TCPSite(
                self._sync_runner, settings.sync_host, settings.sync_port, ssl_context=ssl_context
            )
            await sync_site.start()
            self.sync_url = _url("https", settings.sync_host, _bound_port(self._sync_runner))
            ctx.sync_url = settings.sync_public_url or self.sync_url
        except BaseException:
            await self.stop()
            raise
        log.info("cloud API on %s, sync on %s", self.api_url, self.sync_url)

    async def stop(self) -> None:
        if self._sync_runner is not None:
            await self._sync_runner.cleanup()
            self._sync_runner = None
        if self._api_runner is not None:
            await self._api_runner.cleanup()
            self._api_runner = None

    async def __aenter__(self) -> "CloudServer":
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
