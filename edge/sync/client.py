"""``CloudLink``: the gateway's one connection to the cloud.

It enrols once (one-time token, key made here, CSR signed by the cloud CA), then talks to the
cloud's mTLS listener only: it pushes outbox events and forgets them when acknowledged, pulls
versioned state by cursor, keeps a WebSocket channel open for payment confirmations, and creates
payments for the vend engine. Losing the cloud never stops the site: each loop backs off and tries
again, and the outbox keeps every money event until the cloud has stored it.
"""

import asyncio
import contextlib
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import aiohttp
from pydantic import BaseModel, SecretStr, ValidationError

from contracts.sync import (
    SYNC_PREFIX,
    ChannelAck,
    ChannelMessage,
    EnrollRequest,
    EnrollResponse,
    OutboxEvent,
    PaymentCreate,
    PaymentIntent,
    PaymentUpdate,
    PushAck,
    PushBatch,
    RefundUpdate,
    StateResponse,
)
from edge.backoff import Backoff
from edge.errors import (
    CloudRefusedRequest,
    CloudRejected,
    CloudUnavailable,
    GatewayError,
    NotEnrolled,
)
from edge.metrics import GatewayMetrics
from edge.store import dead_letters
from edge.sync.identity import Enrollment, Identity
from edge.sync.ports import SyncStore

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

REQUEST_TIMEOUT_S = 15.0
CHANNEL_HEARTBEAT_S = 20.0
CHANNEL_HEALTHY_S = 30.0
# Refusals that are about what was sent: a batch refused with one of these is split until the
# refused event stands alone, and that event is moved to the dead letters. Any other 4xx (401,
# 403 revoked, 404 no such endpoint, 429) is the link's problem and is retried like a 5xx.
EVENT_FAULT_STATUSES = frozenset({400, 409, 413, 422})


class SyncSettings(Protocol):
    """The part of ``GatewaySettings`` the cloud link reads."""

    cloud_url: str | None
    enroll_token: SecretStr | None
    gateway_name: str
    data_dir: Path
    sync_pull_interval_s: float
    sync_push_batch: int
    sync_backoff_max_s: float


class CloudLink:
    def __init__(
        self, settings: SyncSettings, store: SyncStore, metrics: GatewayMetrics | None = None
    ) -> None:
        if not settings.cloud_url:
            raise NotEnrolled("CloudLink needs settings.cloud_url")
        _require_safe_enrolment_url(settings.cloud_url)
        self._settings = settings
        self._cloud_url = settings.cloud_url.rstrip("/")
        self._store = store
        self._metrics = metrics
        self._identity = Identity(Path(settings.data_dir) / "cloud")
        self._session: aiohttp.ClientSession | None = None
        self._enrollment: Enrollment | None = None
        self._runner: asyncio.Task[None] | None = None
        self._pull_now = asyncio.Event()
        self._state: dict[str, Any] = {
            "configured": True,
            "enrolled": False,
            "gateway_id": None,
            "channel_connected": False,
            "last_push_at": None,
            "last_pull_at": None,
            "last_error": None,
            "pushed_events": 0,
            "dead_lettered": 0,  # events moved to the dead letters by this process
        }

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> "CloudLink":
        self._runner = asyncio.create_task(self._run(), name="cloud-link")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self._session is not None:
            await self._session.close()
            self._session = None

    def status(self) -> dict[str, object]:
        return dict(self._state)

    def request_pull(self) -> None:
        self._pull_now.set()

    async def _run(self) -> None:
        self._enrollment = await self._enrol_until_done()
        self._state.update(enrolled=True, gateway_id=self._enrollment.gateway_id)
        connector = aiohttp.TCPConnector(ssl=self._identity.ssl_context())
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        )
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._keep_running(self._push_loop), name="cloud-push")
            tg.create_task(self._keep_running(self._pull_loop), name="cloud-pull")
            tg.create_task(self._keep_running(self._channel_loop), name="cloud-channel")

    async def _keep_running(self, loop: Callable[[], Awaitable[None]]) -> None:
        """A bug in one loop must not end the others (or vending): log it, back off, go on."""
        backoff = Backoff(1.0, self._settings.sync_backoff_max_s)
        while True:
            try:
                await loop()
            except Exception as exc:
                log.exception("cloud link loop %s failed", loop.__name__)
                self._state["last_error"] = f"{loop.__name__}: {exc!r}"
            await asyncio.sleep(backoff.next())

    # --- enrolment -------------------------------------------------------------------------

    async def _enrol_until_done(self) -> Enrollment:
        existing = self._identity.enrollment()
        if existing is not None:
            return existing
        token = self._settings.enroll_token
        if token is None:
            self._state["last_error"] = "not enrolled and no enrolment token configured"
            log.error("cloud link idle: %s", self._state["last_error"])
            await asyncio.Event().wait()  # cash vending goes on; nothing to sync with
        assert token is not None
        backoff = Backoff(0.5, self._settings.sync_backoff_max_s)
        while True:
            try:
                return await self._enrol(token.get_secret_value())
            except CloudUnavailable as exc:
                self._note_error(f"enrolment: {exc}")
                await asyncio.sleep(backoff.next())
            except CloudRejected as exc:
                # A used or expired token will not start working: say so and stay idle.
                self._note_error(f"enrolment refused: {exc}")
                await asyncio.Event().wait()

    async def _enrol(self, token: str) -> Enrollment:
        csr = self._identity.make_csr(self._settings.gateway_name)
        request = EnrollRequest(token=token, csr_pem=csr, name=self._settings.gateway_name)
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        ) as session:
            response = await _call(
                session,
                "POST",
                f"{self._cloud_url}/api/v1/gateways/enroll",
                request,
                EnrollResponse,
            )
        enrollment = Enrollment(
            gateway_id=response.gateway_id,
            site_id=response.site_id,
            tenant_id=response.tenant_id,
            sync_url=response.sync_url.rstrip("/"),
        )
        self._identity.save(enrollment, response.certificate_pem, response.ca_pem)
        log.info("enrolled as gateway %s of site %s", enrollment.gateway_id, enrollment.site_id)
        return enrollment

    # --- loops -----------------------------------------------------------------------------

    async def _push_loop(self) -> None:
        backoff = Backoff(0.2, self._settings.sync_backoff_max_s)
        while True:
            events = await self._store.outbox_pending(self._settings.sync_push_batch)
            if not events:
                await self._store.wait_outbox(max_wait=self._settings.sync_pull_interval_s)
                continue
            try:
                await self._push(events)
            except (CloudUnavailable, CloudRejected) as exc:
                # Not the events' fault (network, 5xx, revoked certificate, an answer we cannot
                # read): the batch stays at the head of the outbox and is sent again later.
                self._note_error(f"push: {exc}")
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            self._state["last_push_at"] = time.time()

    async def _push(self, events: list[OutboxEvent]) -> None:
        """Push ``events``; when the cloud refuses the batch whole (an older cloud, or an identity
        conflict), split it until the refused events stand alone and move those aside, so one
        bad event never holds back the rest. Each part is acknowledged as it goes."""
        try:
            ack = await self._sync_call("POST", "/events", PushBatch(events=events), PushAck)
        except CloudRefusedRequest as exc:
            if exc.status not in EVENT_FAULT_STATUSES:
                raise
            if len(events) > 1:
                middle = len(events) // 2
                await self._push(events[:middle])
                await self._push(events[middle:])
                return
            event = events[0]
            if await self._store.dead_letter(event.event_id, exc.status, exc.code, exc.message):
                self._count_dead_letters(dead_letters.ISOLATED, 1)
                log.warning(
                    "event %s (%s) refused by the cloud and moved to the dead letters: %s",
                    event.event_id,
                    event.type,
                    exc,
                )
            return
        # Never mark more than this batch as sent: after a restored or replaced gateway
        # database the cloud's remembered high-water mark can lie above events it has never
        # seen, and trusting it would silently drop them.
        mine = {event.event_id for event in events}
        rejected = [r for r in ack.rejected if r.event_id in mine]
        moved = await self._store.outbox_settled(min(ack.ack_seq, events[-1].seq), rejected)
        if moved:
            self._count_dead_letters(dead_letters.CLOUD, moved)
            log.warning(
                "%d event(s) rejected by the cloud, moved to the dead letters: %s",
                moved,
                ", ".join(f"{r.event_id} ({r.code})" for r in rejected),
            )
        self._state["pushed_events"] += ack.accepted

    def _count_dead_letters(self, source: str, count: int) -> None:
        self._state["dead_lettered"] += count
        if self._metrics is not None:
            self._metrics.events_dead_lettered.labels(source=source).inc(count)

    async def _pull_loop(self) -> None:
        backoff = Backoff(0.2, self._settings.sync_backoff_max_s)
        while True:
            try:
                cursor = await self._store.state_cursor()
                state = await self._sync_call("GET", f"/state?cursor={cursor}", None, StateResponse)
                if state.machines or state.cursor != cursor:
                    await self._store.apply_state(state)
                self._state["last_pull_at"] = time.time()
                backoff.reset()
                delay = self._settings.sync_pull_interval_s
            except (CloudUnavailable, CloudRejected) as exc:
                self._note_error(f"pull: {exc}")
                delay = backoff.next()
            self._pull_now.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._pull_now.wait()

    async def _channel_loop(self) -> None:
        backoff = Backoff(0.2, self._settings.sync_backoff_max_s)
        assert self._enrollment is not None
        url = f"{self._enrollment.sync_url}{SYNC_PREFIX}/channel"
        while True:
            opened = time.monotonic()
            try:
                await self._channel_session(url, backoff)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self._note_error(f"channel: {exc!r}")
            finally:
                self._state["channel_connected"] = False
            if time.monotonic() - opened > CHANNEL_HEALTHY_S:
                backoff.reset()  # a long-lived session was fine; reconnect at once
            await asyncio.sleep(backoff.next())

    async def _channel_session(self, url: str, backoff: Backoff) -> None:
        session = self._require_session()
        async with session.ws_connect(url, heartbeat=CHANNEL_HEARTBEAT_S) as ws:
            self._state["channel_connected"] = True
            self._pull_now.set()  # anything may have changed while we were away
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    if frame.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                        return
                    continue
                try:
                    message = ChannelMessage.model_validate_json(frame.data)
                except ValidationError:
                    log.warning("ignoring malformed channel frame (%d bytes)", len(frame.data))
                    continue
                try:
                    await self._handle(message)
                except (ValidationError, GatewayError) as exc:
                    # Not acked. The cloud re-sends unacked messages on a new connection, so
                    # reconnect (after backoff) instead of leaving this one parked until the
                    # link happens to drop.
                    log.warning("channel message %s not applied: %s", message.id, exc)
                    await ws.close()
                    return
                await ws.send_str(ChannelAck(id=message.id).model_dump_json())
                # Only a message that went through proves the link healthy; a message that
                # keeps failing must not turn reconnects into a tight loop.
                backoff.reset()

    async def _handle(self, message: ChannelMessage) -> None:
        if message.type == "payment.update":
            update = PaymentUpdate.model_validate(message.payload)
            await self._store.apply_payment_update(message.id, update)
        elif message.type == "refund.update":
            refund = RefundUpdate.model_validate(message.payload)
            await self._store.apply_refund_update(message.id, refund)
        elif message.type == "state.changed":
            self._pull_now.set()

    # --- requests --------------------------------------------------------------------------

    async def create_payment(self, request: PaymentCreate) -> PaymentIntent:
        if self._session is None or self._enrollment is None:
            raise CloudUnavailable("not connected to the cloud yet")
        return await self._sync_call("POST", "/payments", request, PaymentIntent)

    async def _sync_call(self, method: str, path: str, body: BaseModel | None, model: type[M]) -> M:
        assert self._enrollment is not None
        url = f"{self._enrollment.sync_url}{SYNC_PREFIX}{path}"
        return await _call(self._require_session(), method, url, body, model)

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise CloudUnavailable("cloud session not open")
        return self._session

    def _note_error(self, text: str) -> None:
        if self._state["last_error"] != text:
            log.warning("cloud link: %s", text)
        self._state["last_error"] = text


class InsecureCloudUrl(GatewayError):
    """Enrolment would travel in clear text to a host that is not this machine."""


def _require_safe_enrolment_url(url: str) -> None:
    """Enrolment hands over the one-time token and receives the CA the gateway will trust from
    then on, so a man in the middle of a plain-HTTP enrolment owns the sync link (and could
    confirm payments). Plain HTTP is allowed only to this machine (demo, tests)."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    host = parts.hostname or ""
    loopback = host == "localhost"
    with contextlib.suppress(ValueError):
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    if parts.scheme != "http" or not loopback:
        raise InsecureCloudUrl(f"cloud_url must be https:// (got {url!r}; http only on loopback)")


async def _call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: BaseModel | None,
    model: type[M],
) -> M:
    """One request to the cloud, its envelope unwrapped into ``model``."""
    payload = None if body is None else body.model_dump(mode="json")
    try:
        async with session.request(method, url, json=payload) as response:
            text = await response.text()
            status = response.status
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise CloudUnavailable(f"{method} {url}: {exc!r}") from exc
    envelope = _decode(text)
    if status >= 500:
        raise CloudUnavailable(f"{method} {url}: HTTP {status} {_error_text(envelope)}")
    if status >= 400:
        error = envelope.get("error")
        error = error if isinstance(error, dict) else {}
        raise CloudRefusedRequest(
            f"{method} {url}: HTTP {status} {_error_text(envelope)}",
            status=status,
            code=str(error.get("code") or f"http_{status}"),
            message=str(error.get("message") or f"HTTP {status}"),
        )
    try:
        return model.model_validate(envelope.get("data"))
    except ValidationError as exc:
        raise CloudRejected(f"{method} {url}: unexpected response: {exc}") from exc


def _decode(text: str) -> Mapping[str, Any]:
    try:
        decoded = json.loads(text)
    except ValueError:
        return {}
    return decoded if isinstance(decoded, dict) else {}


def _error_text(envelope: Mapping[str, Any]) -> str:
    error = envelope.get("error")
    if isinstance(error, dict):
        return f"{error.get('code')}: {error.get('message')}"
    return ""
