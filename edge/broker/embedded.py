"""The embedded amqtt broker (``HardenedBroker``) as an async context manager."""

import asyncio
import logging
from types import TracebackType

from amqtt.errors import BrokerError

from edge.broker.hardened import HardenedBroker, PacketLimits
from edge.broker.plugins import BrokerAuthority, DeviceAuthPlugin, DeviceTopicPlugin
from edge.errors import BrokerStartError
from edge.metrics import GatewayMetrics
from edge.settings import GatewaySettings

log = logging.getLogger(__name__)

BROKER_SHUTDOWN_TIMEOUT_S = 5.0

_AUTH = f"{DeviceAuthPlugin.__module__}.{DeviceAuthPlugin.__qualname__}"
_TOPIC = f"{DeviceTopicPlugin.__module__}.{DeviceTopicPlugin.__qualname__}"


class EmbeddedBroker:
    def __init__(
        self,
        settings: GatewaySettings,
        authority: BrokerAuthority,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._settings = settings
        self._authority = authority
        self.metrics = metrics or GatewayMetrics()
        self._broker: HardenedBroker | None = None
        self.port = 0

    async def __aenter__(self) -> "EmbeddedBroker":
        host = self._settings.mqtt_host
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{self._settings.mqtt_port}"}},
            "session_expiry_interval": self._settings.session_expiry_s,
            # Our plugins only: no anonymous access, no $SYS publishing.
            "plugins": {_AUTH: {}, _TOPIC: {}},
        }
        try:
            self._broker = HardenedBroker(
                config,
                authority=self._authority,
                metrics=self.metrics,
                limits=PacketLimits(
                    device_bytes=self._settings.mqtt_max_packet_bytes,
                    gateway_bytes=self._settings.mqtt_gateway_max_packet_bytes,
                ),
                plugin_namespace=f"vending.gateway.{id(self)}",
            )
            for name in ("DeviceAuthPlugin", "DeviceTopicPlugin"):
                plugin = self._broker.plugins_manager.get_plugin(name)
                if not isinstance(plugin, DeviceAuthPlugin | DeviceTopicPlugin):
                    raise BrokerStartError(f"plugin {name} did not load")
                plugin.bind(self._authority)
            await self._broker.start()
        except BrokerError as exc:
            raise BrokerStartError(f"cannot start the MQTT broker on {host}") from exc
        server = self._broker._servers["default"].instance
        sockets = getattr(server, "sockets", None) or []
        if not sockets:
            raise BrokerStartError("the MQTT listener has no socket")
        self.port = int(sockets[0].getsockname()[1])
        log.info("MQTT broker listening on %s:%d", host, self.port)
        return self

    @property
    def running(self) -> bool:
        return self._broker is not None and self._broker.transitions.state == "started"

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._broker is not None:
            try:
                # amqtt's shutdown can wait forever on a client handler that raced a disconnect;
                # a gateway that is stopping must stop.
                async with asyncio.timeout(BROKER_SHUTDOWN_TIMEOUT_S):
                    await self._broker.shutdown()
            except TimeoutError:
                log.warning("broker shutdown took over %.0fs; abandoned", BROKER_SHUTDOWN_TIMEOUT_S)
            except Exception:
                log.exception("broker shutdown failed")
            self._broker = None
