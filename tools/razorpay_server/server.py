"""``RazorpayTestServer``: the HTTP server plus its background parts, as an async context
manager, and the library API tests use instead of HTTP calls to ``/_test``."""

import asyncio
import random
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

from aiohttp import web

from tools.razorpay_server import api, control
from tools.razorpay_server.engine import Changes, Engine
from tools.razorpay_server.entities import DEFAULT_EVENTS, Account
from tools.razorpay_server.errors import ServerStartError
from tools.razorpay_server.ledger import Ledger
from tools.razorpay_server.tasks import TaskOwner
from tools.razorpay_server.webhooks import DEFAULT_RETRY_DELAYS, Delivery, WebhookDispatcher


class RazorpayTestServer:
    """A local stand-in for Razorpay's QR code, payment and refund APIs and its webhooks.

    ``async with RazorpayTestServer(...) as rzp:`` binds (port 0 = any free port), starts the
    webhook dispatcher, the refund settler and the QR expiry sweep, and stops them all on exit.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        accounts: Iterable[Account] = (),
        public_url: str | None = None,
        webhook_retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
        webhook_jitter: float = 0.2,
        webhook_timeout_s: float = 5.0,
        refund_delay_s: float | None = 0.2,
        min_close_by_s: int = 120,
        expiry_sweep_s: float = 1.0,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        shutdown_timeout_s: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        self._public_url = public_url
        self._url: str | None = None
        self._expiry_sweep_s = expiry_sweep_s
        self._shutdown_timeout_s = shutdown_timeout_s
        self._changes = Changes()
        self._tasks = TaskOwner("razorpay", close_timeout_s=shutdown_timeout_s)
        self.ledger = Ledger(clock=clock, base_url=lambda: self.url, min_close_by_s=min_close_by_s)
        for account in accounts:
            self.ledger.put_account(account)
        self.dispatcher = WebhookDispatcher(
            clock=clock,
            on_change=self._changes.notify,
            retry_delays=webhook_retry_delays,
            jitter=webhook_jitter,
            timeout_s=webhook_timeout_s,
            rng=rng,
        )
        self.engine = Engine(
            ledger=self.ledger,
            dispatcher=self.dispatcher,
            tasks=self._tasks,
            changes=self._changes,
            refund_delay_s=refund_delay_s,
        )
        self._runner: web.AppRunner | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[api.unknown_url], client_max_size=1 << 20)
        app[api.ENGINE] = self.engine
        api.add_routes(app)
        control.add_routes(app)
        return app

    async def __aenter__(self) -> "RazorpayTestServer":
        await self.dispatcher.__aenter__()
        try:
            await self._tasks.__aenter__()
            try:
                await self._start_http()
            except BaseException:
                await self._tasks.__aexit__(None, None, None)
                raise
        except BaseException:
            await self.dispatcher.__aexit__(None, None, None)
            raise
        self._tasks.spawn(self.engine.expire_loop(self._expiry_sweep_s), "expiry")
        return self

    async def _start_http(self) -> None:
        self._runner = web.AppRunner(
            self.make_app(), shutdown_timeout=self._shutdown_timeout_s, access_log=None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ServerStartError(f"cannot listen on {self.host}:{self.port}: {exc}") from exc
        host, port = self._runner.addresses[0][:2]
        self.port = port
        shown = f"[{host}]" if ":" in host else host
        self._url = self._public_url or f"http://{shown}:{port}"

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Hung "timeout" faults wake on this, so shutting down never waits for them.
        self.engine.closing.set()
        try:
            if self._runner is not None:
                async with asyncio.timeout(self._shutdown_timeout_s + 1):
                    await self._runner.cleanup()
        finally:
            try:
                await self._tasks.__aexit__(exc_type, exc, tb)
            finally:
                await self.dispatcher.__aexit__(exc_type, exc, tb)

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the server is not started")
        return self._url

    # -- library API for tests -----------------------------------------------------------------

    def add_account(
        self,
        key_id: str,
        key_secret: str,
        webhook_secret: str,
        webhook_url: str | None = None,
        *,
        events: Iterable[str] | None = None,
    ) -> Account:
        return self.engine.put_account(
            Account(
                key_id=key_id,
                key_secret=key_secret,
                webhook_secret=webhook_secret,
                webhook_url=webhook_url,
                events=frozenset(events) if events is not None else DEFAULT_EVENTS,
            )
        )

    def pay(
        self,
        qr_id: str,
        *,
        vpa: str | None = None,
        amount: int | None = None,
        allow_closed: bool = False,
        allow_amount_mismatch: bool = False,
        fail: bool = False,
    ) -> dict[str, Any]:
        """Take a payment on ``qr_id`` and send its webhooks; answers the payment entity."""
        return self.engine.pay(
            qr_id,
            vpa=vpa,
            amount=amount,
            allow_closed=allow_closed,
            allow_amount_mismatch=allow_amount_mismatch,
            fail=fail,
        )

    def expire_qr(self, qr_id: str) -> dict[str, Any]:
        return self.engine.expire_qr(qr_id)

    def set_faults(
        self,
        endpoint: str,
        mode: str,
        *,
        count: int | None = None,
        delay_s: float | None = None,
        when: str = "before",
    ) -> None:
        self.engine.faults.add(endpoint, mode, count=count, delay_s=delay_s, when=when)

    def clear_faults(self) -> None:
        self.engine.faults.clear()

    @property
    def faults(self) -> list[dict[str, Any]]:
        """The live fault rules, each with how often it ``fired``."""
        return self.engine.faults.public()

    def set_webhook_mode(self, **changes: Any) -> None:
        self.dispatcher.set_mode(changes)

    def release_webhooks(self) -> int:
        return self.dispatcher.release()

    def redeliver(self, event_id: str) -> None:
        self.dispatcher.redeliver(event_id)

    def fail_refund(self, refund_id: str) -> dict[str, Any]:
        return self.engine.settle_refund(refund_id, fail=True)

    def process_refund(self, refund_id: str) -> dict[str, Any]:
        return self.engine.settle_refund(refund_id, fail=False)

    @property
    def state(self) -> dict[str, Any]:
        return self.ledger.snapshot()

    @property
    def deliveries(self) -> list[Delivery]:
        return list(self.dispatcher.log.values())

    def delivered(self, event: str | None = None) -> list[Delivery]:
        return [
            d
            for d in self.dispatcher.log.values()
            if d.state == "delivered" and (event is None or d.event == event)
        ]

    async def wait_until(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        """Wait (event-driven, no polling) until ``predicate()`` holds; TimeoutError after
        ``within`` seconds."""
        await self._changes.wait_until(predicate, within)
