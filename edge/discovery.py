"""Zeroconf announcement of the gateway's kiosk API and broker on the site LAN.

Announcing is a convenience for kiosks and technicians: any failure is logged, never fatal.
"""

import logging
import socket
from types import TracebackType

from zeroconf import ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

log = logging.getLogger(__name__)

SERVICE_TYPE = "_vending-gw._tcp.local."


class Announcement:
    def __init__(
        self, *, name: str, site: str, host: str, http_port: int, mqtt_port: int, api_path: str
    ) -> None:
        self._name = name
        self._site = site
        self._host = host
        self._http_port = http_port
        self._mqtt_port = mqtt_port
        self._api_path = api_path
        self._zeroconf: AsyncZeroconf | None = None
        self._info: ServiceInfo | None = None

    def _addresses(self) -> list[bytes]:
        host = self._host
        if host in ("0.0.0.0", ""):
            try:
                host = socket.gethostbyname(socket.gethostname())
            except OSError:
                host = "127.0.0.1"
        return [socket.inet_aton(host)]

    async def __aenter__(self) -> "Announcement":
        safe_name = "".join(c if c.isalnum() or c in "-_" else "-" for c in self._name)[:50]
        self._info = ServiceInfo(
            SERVICE_TYPE,
            f"{safe_name}.{SERVICE_TYPE}",
            addresses=self._addresses(),
            port=self._http_port,
            properties={
                "name": self._name,
                "site": self._site,
                "api": self._api_path,
                "mqtt_port": str(self._mqtt_port),
            },
            server=f"{safe_name}.local.",
        )
        try:
            self._zeroconf = AsyncZeroconf()
            await self._zeroconf.async_register_service(self._info, allow_name_change=True)
            log.info("announced %s on port %d", self._info.name, self._http_port)
        except Exception as exc:
            log.warning("zeroconf announcement failed: %s", exc)
            await self._close()
        return self

    @property
    def active(self) -> bool:
        return self._zeroconf is not None

    async def _close(self) -> None:
        zc, self._zeroconf = self._zeroconf, None
        if zc is None:
            return
        try:
            if self._info is not None:
                await zc.async_unregister_service(self._info)
            await zc.async_close()
        except Exception as exc:
            log.warning("zeroconf shutdown failed: %s", exc)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()
