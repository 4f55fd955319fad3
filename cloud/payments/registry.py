"""Which payment provider serves a tenant's payment, and the sealed credentials behind it.

``method`` "sandbox" is the process's sandbox provider. ``method`` "upi" is the tenant's own
provider from ``payment_providers`` (Razorpay), built with the tenant's key and the cloud's
Razorpay base URL (a setting, never a tenant's: an admin-set URL would let a tenant aim the
cloud's requests anywhere). The tenant's provider is cached per process and rebuilt when its
row's ``updated_at`` changes, which every process sees, so a credential change anywhere takes
effect on the next call everywhere.

Every tenant's provider sits behind its own circuit breaker (``contracts.breaker``): repeated
unavailability (timeouts, connection errors, 5xx) opens it, and then calls fail at once with
``ProviderUnavailable`` (503 ``provider_unavailable``) without contacting the provider, so a
kiosk hears "UPI unavailable" at once instead of after a timeout. A provider's refusal (4xx) is
an answer and does not count. One breaker per tenant, shared by payment creation, QR closing,
polling and refunds: they all talk to the same account.

Secrets are sealed with the master keys (``contracts.sealing``) bound to their row and column
(``payment_providers.key_secret:<tenant_id>``), so a sealed value copied to another tenant's
row does not open.
"""

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol, TypeVar

import aiohttp
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cloud.db import schema as t
from cloud.db.sealed import SealedDataError, ring_of
from cloud.payments.provider import (
    PaymentProvider,
    PaymentRequest,
    ProviderNotConfigured,
    ProviderPayment,
    ProviderRefund,
    ProviderUnavailable,
    QrPayments,
)
from cloud.payments.razorpay import (
    RAZORPAY,
    RazorpayClient,
    RazorpayCredentials,
    RazorpayProvider,
    new_session,
)
from cloud.settings import CloudSettings
from contracts.breaker import CircuitBreaker, CircuitOpen
from contracts.sealing import SealingError

log = logging.getLogger(__name__)

SecretKind = Literal["key_secret", "webhook_secret"]
Method = Literal["sandbox", "upi"]
PROVIDERS = (RAZORPAY,)
T = TypeVar("T")


def _context(kind: SecretKind, tenant_id: str) -> str:
    return f"payment_providers.{kind}:{tenant_id}"


def seal_secret(conn: AsyncConnection, tenant_id: str, kind: SecretKind, value: str) -> str:
    return ring_of(conn).seal(value, _context(kind, tenant_id))


def open_secret(
    conn: AsyncConnection | AsyncEngine, tenant_id: str, kind: SecretKind, sealed: str
) -> str:
    try:
        return ring_of(conn).open(sealed, _context(kind, tenant_id))
    except SealingError as exc:
        raise SealedDataError(str(exc)) from exc


async def reseal(conn: AsyncConnection) -> int:
    """Re-seal every provider secret under the active master key (``vending-cloud rekey``), so
    an old key can be retired without losing the tenants' credentials."""
    ring = ring_of(conn)
    providers = t.payment_providers
    count = 0
    rows = await conn.execute(
        sa.select(providers.c.tenant_id, providers.c.key_secret, providers.c.webhook_secret)
    )
    for row in rows.all():
        values: dict[str, str] = {}
        for kind in ("key_secret", "webhook_secret"):
            value = getattr(row, kind)
            if not ring.needs_reseal(value):
                continue
            try:
                values[kind] = ring.reseal(value, _context(kind, row.tenant_id))
            except SealingError as exc:
                raise SealedDataError(f"payment provider of {row.tenant_id}: {exc}") from exc
        if values:
            # Guarded by the old values, like the other columns' re-seal.
            await conn.execute(
                providers.update()
                .where(
                    providers.c.tenant_id == row.tenant_id,
                    providers.c.key_secret == row.key_secret,
                    providers.c.webhook_secret == row.webhook_secret,
                )
                .values(**values)
            )
            count += 1
    return count


async def webhook_secret(conn: AsyncConnection, tenant_id: str) -> tuple[str, str] | None:
    """``(provider, webhook secret)`` of the tenant, or None when it has no provider. A
    disabled provider's webhooks are still verified and applied: money already on its way
    must still be counted."""
    row = (
        await conn.execute(
            sa.select(t.payment_providers.c.provider, t.payment_providers.c.webhook_secret).where(
                t.payment_providers.c.tenant_id == tenant_id
            )
        )
    ).first()
    if row is None:
        return None
    return row.provider, open_secret(conn, tenant_id, "webhook_secret", row.webhook_secret)


class BreakerProvider:
    """A tenant's provider with every call through the tenant's circuit breaker."""

    def __init__(self, inner: PaymentProvider, breaker: CircuitBreaker) -> None:
        self.inner = inner
        self.breaker = breaker
        self.name = inner.name

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await self.breaker.call(fn)
        except CircuitOpen as exc:
            raise ProviderUnavailable(
                f"{self.name} is unavailable (circuit open after repeated failures): {what} "
                f"was not attempted",
                retry_after_s=max(1.0, exc.retry_in_s),
            ) from exc
        except TimeoutError as exc:
            raise ProviderUnavailable(f"{self.name}: {what} got no answer in time") from exc

    async def create(self, request: PaymentRequest) -> ProviderPayment:
        return await self._call("creating the payment", lambda: self.inner.create(request))

    async def close(self, provider_ref: str) -> None:
        await self._call("closing the QR code", lambda: self.inner.close(provider_ref))

    async def lookup(self, provider_ref: str) -> ProviderPayment:
        return await self._call("fetching the QR code", lambda: self.inner.lookup(provider_ref))

    async def refund(
        self,
        refund_id: str,
        provider_payment_id: str | None,
        amount: int,
        *,
        order_id: str | None = None,
    ) -> ProviderRefund:
        return await self._call(
            f"refund {refund_id}",
            lambda: self.inner.refund(refund_id, provider_payment_id, amount, order_id=order_id),
        )

    async def payments_of(self, provider_ref: str) -> QrPayments:
        return await self._call(
            "fetching the QR code's payments", lambda: self.inner.payments_of(provider_ref)
        )


@dataclass
class _Cached:
    updated_at: datetime
    provider: BreakerProvider


class ProviderRegistry:
    def __init__(self, settings: CloudSettings, sandbox: PaymentProvider) -> None:
        self._settings = settings
        self.sandbox = sandbox
        self._session: aiohttp.ClientSession | None = None
        self._cache: dict[str, _Cached] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        # The breakers' clock; tests replace it before the first call to step time.
        self.clock: Callable[[], float] = time.monotonic

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = await new_session()
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def breaker(self, tenant_id: str) -> CircuitBreaker:
        breaker = self._breakers.get(tenant_id)
        if breaker is None:
            s = self._settings
            breaker = CircuitBreaker(
                f"provider:{tenant_id}",
                failure_threshold=s.provider_breaker_threshold,
                recovery_s=s.provider_breaker_recovery_s,
                # payments_of makes two calls, each under the client's own timeout.
                call_timeout_s=2 * s.razorpay_timeout_s + 1.0,
                failure_types=(ProviderUnavailable,),
                clock=lambda: self.clock(),
                on_change=_log_change,
            )
            self._breakers[tenant_id] = breaker
        return breaker

    def breakers(self) -> dict[str, dict[str, object]]:
        """Each tenant's breaker as ``CircuitBreaker.snapshot`` tells it (health output)."""
        return {tenant_id: b.snapshot() for tenant_id, b in sorted(self._breakers.items())}

    def invalidate(self, tenant_id: str) -> None:
        self._cache.pop(tenant_id, None)

    async def provider_for(
        self, engine: AsyncEngine, tenant_id: str, method: Method | str
    ) -> PaymentProvider:
        if method == "sandbox":
            if not self._settings.sandbox_payments:
                raise ProviderNotConfigured(
                    "sandbox payments are off on this cloud (they give goods away: tests only)"
                )
            return self.sandbox
        if method != "upi":
            raise ProviderNotConfigured(f"payment method {method!r} is not offered")
        async with engine.connect() as conn:
            stamp = (
                await conn.execute(
                    sa.select(
                        t.payment_providers.c.updated_at, t.payment_providers.c.enabled
                    ).where(t.payment_providers.c.tenant_id == tenant_id)
                )
            ).first()
            if stamp is None or not stamp.enabled:
                self.invalidate(tenant_id)
                raise ProviderNotConfigured(
                    "UPI is not available: this tenant has no payment provider configured"
                )
            cached = self._cache.get(tenant_id)
            if cached is not None and cached.updated_at == stamp.updated_at:
                return cached.provider
            row = (
                await conn.execute(
                    sa.select(t.payment_providers).where(
                        t.payment_providers.c.tenant_id == tenant_id
                    )
                )
            ).one()
            key_secret = open_secret(conn, tenant_id, "key_secret", row.key_secret)
        if row.provider != RAZORPAY:
            raise ProviderNotConfigured(f"payment provider {row.provider!r} is not supported")
        client = RazorpayClient(
            await self._http(),
            self._settings.razorpay_api_url,
            RazorpayCredentials(row.key_id, key_secret),
            timeout_s=self._settings.razorpay_timeout_s,
        )
        provider = BreakerProvider(RazorpayProvider(client), self.breaker(tenant_id))
        self._cache[tenant_id] = _Cached(row.updated_at, provider)
        return provider


def _log_change(name: str, old: str, new: str) -> None:
    level = logging.WARNING if new == "open" else logging.INFO
    log.log(level, "payment provider breaker %s: %s -> %s", name, old, new)


class HasProviders(Protocol):
    engine: AsyncEngine
    providers: ProviderRegistry


async def provider_for(ctx: HasProviders, tenant_id: str, method: Method | str) -> PaymentProvider:
    """The provider for a payment of ``tenant_id`` by ``method``; raises
    ``ProviderNotConfigured`` (409) when the tenant has none for it."""
    return await ctx.providers.provider_for(ctx.engine, tenant_id, method)
