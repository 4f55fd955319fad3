"""amqtt's ``Broker`` with connect, will and retained-message handling we can trust.

amqtt 0.12.1 copies a CONNECT's will, keep-alive and credentials onto an existing session of the
same client id *before* it authenticates the CONNECT; a refused client then still replaces the
session's handler and closes the live connection, and the session later publishes the refused
client's will, which no topic plugin ever sees. At connect it also sends every retained message
matching *anyone's* subscription to the new session. ``HardenedBroker`` replaces those paths:

* the fresh CONNECT is authenticated (and its will checked against the ACL) before any session
  is looked up; a refusal is answered with a CONNACK refusal and a close, and changes nothing;
* only an authenticated client of the same identity (username) takes over a session, and the
  old connection is ended (its own will published, if still allowed) before the new one starts;
* a will passes the ACL at CONNECT and again when it would be published;
* retained messages go only to the session's own subscriptions, each one checked for RECEIVE,
  and only presence may be retained by a device;
* every packet is size-checked from its fixed header before its body is read
  (``edge.broker.framing``).

These overrides replace private methods of amqtt 0.12.1, so the broker refuses to start on any
other amqtt version (pyproject.toml pins it); re-read amqtt/broker.py before moving the pin.
"""

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TypeVar

from amqtt.adapters import ReaderAdapter, StreamWriterAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, BrokerError, MQTTError, NoDataError
from amqtt.events import BrokerEvents
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.constants import QOS_1, QOS_2
from amqtt.mqtt.disconnect import DisconnectPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session

from edge.broker.framing import PacketLimitReader
from edge.broker.plugins import BrokerAuthority
from edge.errors import BrokerStartError
from edge.metrics import GatewayMetrics

log = logging.getLogger(__name__)

AMQTT_VERSION = "0.12.1"
# How long a take-over waits for the old connection's message loop to end.
TAKEOVER_TIMEOUT_S = 5.0
# How long a new connection may take to send its CONNECT (amqtt waits forever, so idle sockets
# could pile up without ever authenticating).
CONNECT_TIMEOUT_S = 10.0
# Topic filters one device session may hold (the firmware subscribes three). amqtt matches every
# routed message against every filter of every session, and a persistent session keeps them:
# unbounded, one machine's MQTT password could slow the whole site's broker for good.
MAX_DEVICE_SUBSCRIPTIONS = 16
SUBSCRIPTION_REFUSED = 0x80
V = TypeVar("V")


class UnsupportedAmqttVersion(BrokerStartError):
    """The installed amqtt is not the version whose private methods ``HardenedBroker`` overrides."""


def check_amqtt_version() -> None:
    try:
        installed = version("amqtt")
    except PackageNotFoundError as exc:
        raise UnsupportedAmqttVersion("amqtt is not installed") from exc
    if installed != AMQTT_VERSION:
        raise UnsupportedAmqttVersion(
            f"amqtt {installed} is installed; the gateway's broker is built on amqtt "
            f"{AMQTT_VERSION} exactly (edge/broker/hardened.py overrides its connect handling)"
        )


@dataclass(frozen=True)
class PacketLimits:
    device_bytes: int
    gateway_bytes: int


def topic_prefix(name: str) -> str | None:
    """The first two levels of a topic name or filter (``devices/M``) when both are literal,
    else None. A filter with a literal prefix matches only topics with that same prefix."""
    first, sep, rest = name.partition("/")
    if not sep:
        return None
    second = rest.partition("/")[0]
    if "+" in first or "#" in first or "+" in second or "#" in second:
        return None
    return f"{first}/{second}"


class TopicIndex(dict[str, V]):
    """A dict of topic names or filters that also groups its keys by ``topic_prefix``.

    amqtt keeps subscriptions (filter -> subscribers) and retained messages (topic -> message)
    in plain dicts and walks all of them for every routed message, every new subscription and
    every connect: with one presence topic and three filters per device, a reconnect wave of N
    devices costs N^2 matches. With the index a device's topic is matched only against the
    filters under its own ``devices/<id>`` plus the few wildcard ones (the gateway's).
    amqtt adds and removes keys with ``[]=``, ``del`` and ``clear``; the other mutators are
    kept in step as well.
    """

    def __init__(self) -> None:
        super().__init__()
        self.by_prefix: dict[str | None, dict[str, None]] = {}

    def __setitem__(self, key: str, value: V) -> None:
        if key not in self:
            self.by_prefix.setdefault(topic_prefix(key), {})[key] = None
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._unindex(key)

    def _unindex(self, key: str) -> None:
        prefix = topic_prefix(key)
        keys = self.by_prefix.get(prefix)
        if keys is not None:
            keys.pop(key, None)
            if not keys:
                del self.by_prefix[prefix]

    def pop(self, key: str, *default: Any) -> Any:
        if key in self:
            self._unindex(key)
        return super().pop(key, *default)

    def popitem(self) -> tuple[str, V]:
        key, value = super().popitem()
        self._unindex(key)
        return key, value

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def clear(self) -> None:
        super().clear()
        self.by_prefix.clear()

    def __repr__(self) -> str:
        # amqtt 0.12.1 logs ``repr(self._subscriptions)`` at debug level after every SUBSCRIBE,
        # evaluated whatever the log level: the repr of every session of the broker, per
        # subscription (5 % of the loop in a 1,000-device wave, and quadratic).
        return f"<TopicIndex of {len(self)} keys>"

    def under(self, prefix: str | None) -> list[str]:
        """Keys whose literal prefix is ``prefix`` (a snapshot: safe across awaits)."""
        return list(self.by_prefix.get(prefix, ()))

    def wildcards(self) -> list[str]:
        """Keys without a literal two-level prefix (wildcard filters, short names)."""
        return list(self.by_prefix.get(None, ()))

    def candidates_for_topic(self, topic_name: str) -> list[str]:
        """Filters that may match a (wildcard-free) topic name: a superset of the matches."""
        prefix = topic_prefix(topic_name)
        if prefix is None:
            return list(self)
        return self.under(prefix) + self.wildcards()

    def candidates_for_filter(self, topic_filter: str) -> list[str]:
        """Topic names a filter may match: a superset of the matches."""
        prefix = topic_prefix(topic_filter)
        if prefix is None:
            return list(self)
        return self.under(prefix)


class HardenedBroker(Broker):
    def __init__(
        self,
        config: dict[str, Any],
        *,
        authority: BrokerAuthority,
        metrics: GatewayMetrics,
        limits: PacketLimits,
        plugin_namespace: str,
    ) -> None:
        check_amqtt_version()
        super().__init__(config, plugin_namespace=plugin_namespace)
        self._authority = authority
        self._metrics = metrics
        self._limits = limits
        # Set when a connection's message loop has ended, so a take-over can wait for it.
        self._connection_done: dict[str, asyncio.Event] = {}
        self._client_locks: dict[str, asyncio.Lock] = {}
        # Indexed by topic prefix (see TopicIndex): amqtt walked every filter and every retained
        # message for each routed message, subscription and connect.
        self._subscriptions: TopicIndex[list[tuple[Session, int]]] = TopicIndex()
        self._retained_messages: TopicIndex[Any] = TopicIndex()

    async def shutdown(self) -> None:
        # amqtt 0.12.1 closes its listeners last, after ending every session one by one: with
        # many devices, those ending first reconnect at once into a broker whose store is
        # closing and are refused (NOT_AUTHORIZED), which doubles their backoff before the
        # restarted gateway is up. Stop accepting first.
        for server in self._servers.values():
            instance = server.instance
            if isinstance(instance, asyncio.Server):
                instance.close()
        await super().shutdown()

    # --- reading -------------------------------------------------------------------------------

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        limited = PacketLimitReader(
            reader, writer, self._limits.device_bytes, self._oversized, self._qos2
        )
        await self._client_connected(listener_name, limited, StreamWriterAdapter(writer))

    def _oversized(self, size: int) -> None:
        self._metrics.mqtt_oversized_packets.inc()

    def _qos2(self) -> None:
        self._metrics.mqtt_rejected.labels(reason="qos2").inc()

    # --- connect -------------------------------------------------------------------------------

    async def _client_connected(
        self, listener_name: str, reader: ReaderAdapter, writer: WriterAdapter
    ) -> None:
        server = self._servers.get(listener_name)
        if not server:
            raise BrokerError(f"Invalid listener name '{listener_name}'")
        await server.acquire_connection()
        try:
            await self._serve(reader, writer, listener_name)
        except (AMQTTError, MQTTError, NoDataError) as exc:
            log.warning("MQTT connection ended with an error: %s", exc)
        except OSError as exc:
            # The client went away (reset) before we were done, e.g. while its CONNECT waited
            # for a check: nothing to answer, and no traceback for asyncio to log.
            log.debug("MQTT connection gone: %s", exc)
        finally:
            server.release_connection()

    async def _serve(
        self, reader: ReaderAdapter, writer: WriterAdapter, listener_name: str
    ) -> None:
        peer = writer.get_peer_info()
        if peer is None:
            await writer.close()
            return
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                handler, incoming = await BrokerProtocolHandler.init_from_connect(
                    reader, writer, self.plugins_manager
                )
        except TimeoutError:
            self._authority.refusal_log(
                ("timeout", str(peer[0])), logging.INFO,
                "closed MQTT connection from %s:%s: no CONNECT in time", *peer,
            )  # fmt: skip
            self._metrics.mqtt_connects_refused.labels(reason="timeout").inc()
            await writer.close()
            return
        except NoDataError:
            await writer.close()  # closed before a CONNECT, or an oversized one (counted)
            return
        except (AMQTTError, MQTTError) as exc:
            # init_from_connect has already answered what has a CONNACK code.
            self._authority.refusal_log(
                ("malformed", str(peer[0])), logging.INFO,
                "refused a malformed CONNECT from %s:%s: %s", *peer, exc,
            )  # fmt: skip
            self._metrics.mqtt_connects_refused.labels(reason="malformed").inc()
            await writer.close()
            return

        reason = await self._vet(incoming, listener_name)
        if reason is not None:
            self._authority.refusal_log(
                ("connect", str(peer[0]), reason), logging.WARNING,
                "refused CONNECT from %s:%s (client id %r, user %r): %s",
                *peer, incoming.client_id, incoming.username, reason,
            )  # fmt: skip
            self._metrics.mqtt_connects_refused.labels(reason=reason).inc()
            # Answered on the raw stream: the handler was never attached to any session.
            await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
            await writer.close()
            return

        if isinstance(reader, PacketLimitReader) and self._authority.is_gateway(incoming):
            reader.limit = self._limits.gateway_bytes
        await self._run_session(handler, incoming, reader, writer)

    async def _vet(self, incoming: Session, listener_name: str) -> str | None:
        """Why this CONNECT is refused, or None. Reads no broker state but the identity of an
        existing session with the same client id."""
        listener = self.listeners_config[listener_name]
        if not incoming.client_id or not await self._authenticate(incoming, listener):
            return "credentials"
        if incoming.will_flag and not await self._will_allowed(incoming):
            return "will"
        current = self._sessions.get(incoming.client_id)
        if current is not None and current[0].username != incoming.username:
            return "identity"
        return None

    async def _will_allowed(self, session: Session) -> bool:
        topic_name = session.will_topic
        if not topic_name or "+" in topic_name or "#" in topic_name or topic_name.startswith("$"):
            return False
        if not self._authority.will_allowed(session):
            return False
        # The topic plugin also re-checks that the machine is still active with these
        # credentials, which matters when the will is published long after the CONNECT.
        return await self._topic_filtering(session, topic_name, Action.PUBLISH)

    @contextlib.asynccontextmanager
    async def _client_lock(self, client_id: str) -> AsyncIterator[None]:
        # Two authenticated CONNECTs with one client id take turns, so each take-over sees a
        # settled session. Only authenticated ids get here, so the dict stays small.
        lock = self._client_locks.setdefault(client_id, asyncio.Lock())
        async with lock:
            yield

    async def _run_session(
        self,
        handler: BrokerProtocolHandler,
        incoming: Session,
        reader: ReaderAdapter,
        writer: WriterAdapter,
    ) -> None:
        client_id = incoming.client_id
        assert client_id  # _vet refuses an empty one
        done = asyncio.Event()
        try:
            async with self._client_lock(client_id):
                session = await self._adopt(incoming)
                session.transitions.connect()
                handler.attach(session, reader, writer)
                self._sessions[client_id] = (session, handler)
                self._connection_done[client_id] = done
                await handler.mqtt_connack_authorize(True)
                await self.plugins_manager.fire_event(
                    BrokerEvents.CLIENT_CONNECTED, client_id=client_id, client_session=session
                )
                await handler.start()
            await self._publish_session_retained_messages(session)
            # A resumed session gets the retained messages of its own subscriptions (amqtt
            # 0.12.1 walked every client's subscriptions here).
            for topic_filter in self._filters_of(session):
                for subscriber, qos in list(self._subscriptions.get(topic_filter, ())):
                    if subscriber is session:
                        await self._publish_retained_messages_for_subscription(
                            (topic_filter, qos), session
                        )
            await self._client_message_loop(session, handler)
        finally:
            done.set()
            if self._connection_done.get(client_id) is done:
                del self._connection_done[client_id]

    async def _adopt(self, incoming: Session) -> Session:
        """The session this authenticated CONNECT continues: its own (clean session) or the
        existing one of the same identity, after ending that session's live connection."""
        client_id = incoming.client_id
        current = self._sessions.get(client_id)
        if current is not None and current[0].transitions.is_connected():
            await self._take_over(client_id, current[0], current[1])
        existing = self._sessions.get(client_id)
        if incoming.clean_session or existing is None:
            await self._delete_session(client_id)
            incoming.parent = 0
            session = incoming
        else:
            session = existing[0]
            for name in ("will_flag", "will_retain", "will_qos", "will_topic", "will_message"):
                setattr(session, name, getattr(incoming, name))
            session.keep_alive = incoming.keep_alive
            session.username = incoming.username
            session.password = incoming.password
            session.remote_address = incoming.remote_address
            session.remote_port = incoming.remote_port
            session.parent = 1
        delay = self.config.get("timeout-disconnect-delay", 0)
        if session.keep_alive > 0 and isinstance(delay, int):
            session.keep_alive += delay
        return session

    async def _take_over(
        self, client_id: str, session: Session, handler: BrokerProtocolHandler
    ) -> None:
        log.info("client %s reconnected: ending its previous connection", client_id)
        done = self._connection_done.get(client_id)
        # Ends the old message loop as a lost connection: its own will (checked) goes out.
        await handler.handle_connection_closed()
        if done is not None:
            try:
                async with asyncio.timeout(TAKEOVER_TIMEOUT_S):
                    await done.wait()
            except TimeoutError:
                log.warning("previous connection of %s did not end in time", client_id)
        if session.transitions.is_connected():
            await self._stop_handler(handler)
            session.transitions.disconnect()

    # --- wills ---------------------------------------------------------------------------------

    async def _handle_disconnect(
        self,
        client_session: Session,
        handler: BrokerProtocolHandler,
        disconnect_waiter: asyncio.Future[Any],
    ) -> None:
        result = disconnect_waiter.result()
        if not isinstance(result, DisconnectPacket) and client_session.will_flag:
            if await self._will_allowed(client_session):
                await self._broadcast_message(
                    client_session,
                    client_session.will_topic,
                    client_session.will_message,
                    client_session.will_qos,
                )
                if client_session.will_retain:
                    await self.retain_message(
                        client_session,
                        client_session.will_topic,
                        client_session.will_message,
                        client_session.will_qos,
                    )
            else:
                log.warning(
                    "dropped the last will of %s on %r: no longer allowed",
                    client_session.client_id, client_session.will_topic,
                )  # fmt: skip
                self._metrics.mqtt_wills_dropped.inc()
        await self._stop_handler(handler)
        client_session.transitions.disconnect()
        await self.plugins_manager.fire_event(
            BrokerEvents.CLIENT_DISCONNECTED,
            client_id=client_session.client_id,
            client_session=client_session,
        )

    # --- subscriptions -------------------------------------------------------------------------

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        topic_filter, _ = subscription
        if not self._authority.is_gateway(session):
            held = sum(
                1
                for held_filter in self._filters_of(session)
                if held_filter != topic_filter
                and any(
                    s.client_id == session.client_id
                    for s, _ in self._subscriptions.get(held_filter, ())
                )
            )
            if held >= MAX_DEVICE_SUBSCRIPTIONS:
                self._authority.refusal_log(
                    ("subscriptions", session.client_id or ""), logging.WARNING,
                    "refused %s subscribe on %r: it holds %d topic filters already",
                    session.client_id, topic_filter, held,
                )  # fmt: skip
                return SUBSCRIPTION_REFUSED
        return await super().add_subscription(subscription, session)

    def _filters_of(self, session: Session) -> list[str]:
        """Filters that may hold this session (a superset; a snapshot). The ACL grants a device
        filters only under its own ``devices/<id>``; the gateway may hold any."""
        if self._authority.is_gateway(session) or not session.client_id:
            return list(self._subscriptions)
        return (
            self._subscriptions.under(topic_prefix(f"devices/{session.client_id}/x"))
            + self._subscriptions.wildcards()
        )

    async def _del_all_subscriptions(self, session: Session) -> None:
        # amqtt walks every filter of the broker for each session it ends.
        emptied = [f for f in self._filters_of(session) if self._del_subscription(f, session)]
        for topic_filter in emptied:
            if not self._subscriptions.get(topic_filter, [None]):
                del self._subscriptions[topic_filter]

    async def _run_broadcast(self, running_tasks: deque[asyncio.Task[Any]]) -> None:
        """amqtt 0.12.1's, except that the topic is matched only against the filters that can
        match it (``TopicIndex``), over a snapshot: amqtt iterated the live dict across awaits
        and lost the message ("dictionary changed size during iteration") whenever a client
        subscribed or left meanwhile, which a connect wave makes common."""
        broadcast = await self._broadcast_queue.get()
        topic_name = broadcast["topic"]
        targets = [
            (topic_filter, list(self._subscriptions.get(topic_filter, ())))
            for topic_filter in self._subscriptions.candidates_for_topic(topic_name)
        ]
        for topic_filter, subscribers in targets:
            if not self._matches(topic_name, topic_filter):
                continue
            for target_session, sub_qos in subscribers:
                qos = broadcast.get("qos", sub_qos)
                if not await self._topic_filtering(
                    target_session, topic=topic_name, action=Action.RECEIVE
                ):
                    continue
                connected = target_session.transitions.state == "connected"
                if (
                    not connected
                    and not target_session.clean_session
                    and qos in (QOS_1, QOS_2)
                    and not target_session.is_anonymous
                ):
                    await self._retain_broadcast_message(broadcast, qos, target_session)
                    continue
                if not connected:
                    continue
                handler = self._get_handler(target_session)
                if handler:
                    running_tasks.append(
                        asyncio.ensure_future(
                            handler.mqtt_publish(topic_name, broadcast["data"], qos, retain=False)
                        )
                    )

    # --- retained messages ---------------------------------------------------------------------

    async def retain_message(
        self,
        source_session: Session | None,
        topic_name: str | None,
        data: bytes | bytearray | None,
        qos: int | None = None,
    ) -> None:
        # The publish itself already passed the ACL; only what is kept for later is narrowed.
        if (
            source_session is not None
            and topic_name is not None
            and not self._authority.may_retain(source_session, topic_name)
        ):
            self._authority.refusal_log(
                ("retain", source_session.client_id or ""), logging.INFO,
                "not retaining %s's publish on %r", source_session.client_id, topic_name,
            )  # fmt: skip
            self._metrics.mqtt_retain_refused.inc()
            return
        await super().retain_message(source_session, topic_name, data, qos)

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        topic_filter, qos = subscription
        handler = self._get_handler(session)
        if handler is None:
            return
        tasks = []
        # Only the retained topics under the filter's own prefix (amqtt matched every retained
        # message against every new subscription: quadratic in a reconnect wave).
        for topic_name in self._retained_messages.candidates_for_filter(topic_filter):
            retained = self._retained_messages.get(topic_name)
            if retained is None or not self._matches(topic_name, topic_filter):
                continue
            if not await self._topic_filtering(session, topic_name, Action.RECEIVE):
                continue
            tasks.append(
                asyncio.ensure_future(
                    handler.mqtt_publish(
                        retained.topic, retained.data, min(qos, retained.qos or qos), retain=True
                    )
                )
            )
        if tasks:
            await asyncio.wait(tasks)

    async def _publish_session_retained_messages(self, session: Session) -> None:
        # Messages queued for an offline session passed the RECEIVE check when queued; the
        # session may have lost rights since (decommission), so they are checked again.
        handler = self._get_handler(session)
        if handler is None:
            return
        tasks = []
        while not session.retained_messages.empty():
            queued = session.retained_messages.get_nowait()
            if not await self._topic_filtering(session, queued.topic, Action.RECEIVE):
                continue
            tasks.append(
                asyncio.ensure_future(
                    handler.mqtt_publish(queued.topic, queued.data, queued.qos, retain=True)
                )
            )
        if tasks:
            await asyncio.wait(tasks)
