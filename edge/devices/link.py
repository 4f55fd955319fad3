"""``DeviceLink``: the gateway's own MQTT client.

It receives what devices publish, validates it against ``contracts.device_messages``, persists
money events through the store and only then acknowledges them to the device, with an ack the
store signed with the machine's gateway-to-device key (the device forgets a money event on
nothing less). Nothing a device
sends can crash or stall the receive loop: every bad message is logged, counted and dropped.
It also publishes signed dispense commands (QoS 1).

Cash credits, dispense results and inventory counts must come signed by the device
(``contracts.signing``): the broker's word that a machine's MQTT identity published them is not
enough. The store checks signature and freshness and applies them in one transaction; refused
ones change nothing, are not acked, are counted by reason and logged once in a while per
machine and reason (never with their payload).
"""

import asyncio
import logging
import time
from types import TracebackType

from amqtt.client import MQTTClient
from amqtt.mqtt.constants import QOS_1
from pydantic import ValidationError

from contracts import topics
from contracts.device_messages import DeviceLog, DispenseResult, Health, Presence
from contracts.signing import SIGNED_DEVICE_SUFFIXES
from contracts.text import clean_device_text
from edge.backoff import Backoff
from edge.devices.status import StatusWriter
from edge.errors import DeviceLinkError
from edge.metrics import GatewayMetrics
from edge.settings import GatewaySettings
from edge.store import GatewayStore

log = logging.getLogger(__name__)

# A refusal is logged at most this often per machine and reason (an attacker with a device's MQTT
# password could otherwise flood the log).
REFUSAL_LOG_INTERVAL_S = 300.0
_REFUSAL_LOG_MAX = 4096
# Device log lines written per machine: a burst of this many, then one a second. A machine's
# MQTT password (in a stolen device's flash, or sniffed from plain MQTT on the LAN) lets anyone
# publish on its logs topic; unbounded, that fills the gateway's disk.
DEVICE_LOG_BURST = 60
DEVICE_LOG_PER_S = 1.0
# Messages are handled in arrival order per machine, but machines do not wait for each other:
# handled one at a time, each machine's store commit and ack publish held up every other
# machine's dispense result (most of a vend at 20 machines). A machine with this many messages
# waiting makes the receive loop wait, as a slow handler did before.
MACHINE_BACKLOG = 64

SUBSCRIPTIONS = (
    f"{topics.ROOT}/+/status/#",
    f"{topics.ROOT}/+/events/#",
    f"{topics.ROOT}/+/{topics.LOGS}",
)


class DeviceLink:
    def __init__(
        self,
        settings: GatewaySettings,
        store: GatewayStore,
        metrics: GatewayMetrics,
        broker_url: str,
    ) -> None:
        self._settings = settings
        self._store = store
        self._metrics = metrics
        self._broker_url = broker_url
        self._client: MQTTClient | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._refusals_logged: dict[tuple[str, str], float] = {}
        self._log_budget: dict[str, tuple[float, float]] = {}  # machine -> (tokens, at)
        self._lanes: dict[str, asyncio.Queue[tuple[str, bytes]]] = {}  # machine -> backlog
        self._lane_tasks: set[asyncio.Task[None]] = set()
        # Presence and health are written in the background, coalesced (edge.devices.status).
        self._status = StatusWriter(store)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def __aenter__(self) -> "DeviceLink":
        self._status.start()
        self._task = asyncio.create_task(self._run(), name="device-link")
        try:
            async with asyncio.timeout(10):
                await self._connected.wait()
        except TimeoutError as exc:
            await self.__aexit__(None, None, None)
            raise DeviceLinkError(f"cannot connect to the broker at {self._broker_url}") from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for task in self._lane_tasks:
            task.cancel()
        await asyncio.gather(*self._lane_tasks, return_exceptions=True)
        self._lanes.clear()
        await self._disconnect()
        await self._status.close()

    async def _disconnect(self) -> None:
        self._connected.clear()
        client, self._client = self._client, None
        if client is not None:
            try:
                async with asyncio.timeout(5):
                    await client.disconnect()
            except Exception:
                log.debug("disconnect failed", exc_info=True)

    def _uri(self) -> str:
        scheme, _, rest = self._broker_url.partition("://")
        user = self._settings.gateway_client_id
        return f"{scheme}://{user}:{self._settings.mqtt_password}@{rest}"

    async def _run(self) -> None:
        backoff = Backoff(0.2, self._settings.sync_backoff_max_s)
        while True:
            client = MQTTClient(
                client_id=self._settings.gateway_client_id,
                config={"auto_reconnect": False, "keep_alive": 30, "cleansession": True},
            )
            try:
                async with asyncio.timeout(10):
                    await client.connect(self._uri())
                    await client.subscribe([(name, QOS_1) for name in SUBSCRIPTIONS])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = backoff.next()
                log.warning("broker connect failed (%s); retry in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            self._client = client
            self._connected.set()
            log.info("device link connected to %s", self._broker_url)
            try:
                await self._receive(client)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("device link lost (%s); reconnecting", exc)
            finally:
                self._connected.clear()
                self._client = None

    async def _receive(self, client: MQTTClient) -> None:
        while True:
            try:
                message = await client.deliver_message(timeout_duration=5)
            except TimeoutError:
                if not _is_connected(client):
                    raise DeviceLinkError("broker connection closed") from None
                continue
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                # amqtt cancels its pending delivery when the connection drops.
                raise DeviceLinkError("broker connection closed") from None
            if message is None:
                raise DeviceLinkError("broker connection closed")
            await self._dispatch(message.topic, bytes(message.data or b""))

    async def _dispatch(self, topic_name: str, payload: bytes) -> None:
        """Queue the message on its machine's lane (started on first use; it lives as long as
        the link), in arrival order; waits only while that machine's lane is full."""
        parts = topics.split(topic_name)
        key = parts[0] if parts is not None else ""
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = asyncio.Queue(MACHINE_BACKLOG)
            task = asyncio.create_task(self._drain(lane), name=f"device-link-{key}")
            self._lane_tasks.add(task)
            task.add_done_callback(self._lane_tasks.discard)
        await lane.put((topic_name, payload))

    async def _drain(self, lane: "asyncio.Queue[tuple[str, bytes]]") -> None:
        while True:
            topic_name, payload = await lane.get()
            try:
                await self._handle(topic_name, payload)
            except Exception:
                # A store failure or a bug must not take the link down; the device retries
                # anything that matters because it was not acked.
                log.exception("handling %s failed", topic_name)
                self._metrics.mqtt_rejected.labels(reason="handler_error").inc()

    def _reject(self, reason: str, topic_name: str, detail: object = None) -> None:
        self._metrics.mqtt_rejected.labels(reason=reason).inc()
        if self._log_due((topic_name, reason)):
            log.warning("dropped message on %s: %s %s (logged at most every %.0fs)",
                        topic_name, reason, detail or "", REFUSAL_LOG_INTERVAL_S)  # fmt: skip

    def _refuse(self, machine_id: str, reason: str) -> None:
        self._metrics.device_messages_refused.labels(reason=reason).inc()
        if not self._log_due((machine_id, reason)):
            return
        log.warning(
            "refused a device message for machine %s: %s (logged at most every %.0fs)",
            machine_id,
            reason,
            REFUSAL_LOG_INTERVAL_S,
        )

    def _log_due(self, key: tuple[str, str]) -> bool:
        """Whether a refusal of this kind is due to be logged (at most every interval)."""
        now = time.monotonic()
        last = self._refusals_logged.get(key)
        if last is not None and now - last < REFUSAL_LOG_INTERVAL_S:
            return False
        if len(self._refusals_logged) >= _REFUSAL_LOG_MAX:
            self._refusals_logged.clear()
        self._refusals_logged[key] = now
        return True

    async def _handle_signed(self, machine_id: str, suffix: str, payload: bytes) -> None:
        outcome = await self._store.record_signed_message(machine_id, suffix, payload)
        if outcome.status == "refused":
            self._refuse(machine_id, outcome.reason or "refused")
            return
        self._metrics.mqtt_messages.labels(kind=suffix).inc()
        message = outcome.message
        if isinstance(message, DispenseResult):
            if outcome.status == "unknown_command":
                self._reject("unknown_command", topics.topic(machine_id, suffix), message.cmd_id)
            elif outcome.status == "applied":
                self._metrics.dispense_results.labels(result=message.result.value).inc()
        # Persisted (or known already): the device may forget it. An unknown command is acked
        # too, so a device does not resend it forever.
        if outcome.ack is not None:
            await self.ack(machine_id, outcome.ack)

    async def _handle(self, topic_name: str, payload: bytes) -> None:
        parts = topics.split(topic_name)
        if parts is None or parts[1] not in topics.DEVICE_PUBLISH_SUFFIXES:
            self._reject("unexpected_topic", topic_name)
            return
        machine_id, suffix = parts
        if len(payload) > self._settings.max_mqtt_payload:
            self._reject("oversized", topic_name, len(payload))
            return
        if suffix in SIGNED_DEVICE_SUFFIXES:
            await self._handle_signed(machine_id, suffix, payload)
            return
        if suffix == topics.PRESENCE and not payload:
            return  # a cleared retained presence
        model = _MODELS[suffix]
        try:
            message = model.model_validate_json(payload)
        except ValidationError as exc:
            self._reject("malformed", topic_name, exc.error_count())
            return
        self._metrics.mqtt_messages.labels(kind=suffix).inc()
        match message:
            case Presence():
                self._status.presence(machine_id, message.online, message.fw)
            case Health():
                self._status.touch(machine_id)
            case DeviceLog():
                if not self._may_log(machine_id):
                    self._metrics.mqtt_rejected.labels(reason="log_rate").inc()
                    return
                # Control characters replaced: a newline would let a device write lines that
                # read as the gateway's own.
                text = clean_device_text(message.msg, len(message.msg))
                log.info("device %s [%s] %s", machine_id, message.level, text)

    def _may_log(self, machine_id: str) -> bool:
        now = time.monotonic()
        tokens, at = self._log_budget.get(machine_id, (float(DEVICE_LOG_BURST), now))
        tokens = min(float(DEVICE_LOG_BURST), tokens + (now - at) * DEVICE_LOG_PER_S)
        allowed = tokens >= 1.0
        self._log_budget[machine_id] = (tokens - 1.0 if allowed else tokens, now)
        return allowed

    async def ack(self, machine_id: str, signed_ack: bytes) -> None:
        """Publish an ack the store signed (``contracts.signing.sign_acks``) for ``machine_id``."""
        await self.publish(topics.topic(machine_id, topics.ACKS), signed_ack)

    async def publish(self, topic_name: str, payload: bytes, *, retain: bool = False) -> None:
        client = self._client
        if client is None or not self._connected.is_set():
            raise DeviceLinkError("not connected to the broker")
        try:
            async with asyncio.timeout(10):
                await client.publish(topic_name, payload, qos=QOS_1, retain=retain)
        except TimeoutError as exc:
            raise DeviceLinkError(f"publish to {topic_name} timed out") from exc
        except Exception as exc:
            raise DeviceLinkError(f"publish to {topic_name} failed") from exc

    async def send_dispense(self, machine_id: str, payload: bytes) -> None:
        await self.publish(topics.topic(machine_id, topics.DISPENSE_COMMAND), payload)


def _is_connected(client: MQTTClient) -> bool:
    state = getattr(client, "_connected_state", None)
    return bool(state is not None and state.is_set())


# The unsigned kinds; the signed ones are parsed by the store after their signature checks.
_MODELS: dict[str, type[Presence | Health | DeviceLog]] = {
    topics.PRESENCE: Presence,
    topics.HEALTH: Health,
    topics.LOGS: DeviceLog,
}

__all__ = ["SUBSCRIPTIONS", "DeviceLink"]
