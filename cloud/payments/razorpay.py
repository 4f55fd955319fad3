"""A small asyncio client for the part of Razorpay's REST API the cloud uses, and the Razorpay
payment provider built on it.

Why not the official ``razorpay`` package: it is synchronous over ``requests``, so every call
would need a thread of its own off the event loop, its timeouts are not the caller's (a hung
call cannot be cancelled with the task that made it, and ``asyncio.timeout`` cannot stop a
thread), and it brings a second HTTP stack for seven endpoints. This client is aiohttp (already
the cloud's HTTP stack): one ``ClientSession`` per process shared by every tenant, a timeout on
every call, HTTP Basic auth with the calling tenant's key id and secret, and Razorpay's error
envelope (``{"error": {"code", "description", ...}}``) turned into our error types:

- ``ProviderUnavailable`` (retry later): connection errors, timeouts, 5xx, 429, and 409 (the
  same idempotent request is still being processed), and answers we cannot read;
- ``ProviderRejected`` (do not retry as is): any other 4xx, with Razorpay's error code and
  description.

Endpoints: create / fetch / close a QR code, a QR code's payments, fetch a payment, create a
refund (``X-Refund-Idempotency``: our refund id), fetch a refund.
"""

import base64
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from cloud.db.times import utcnow
from cloud.payments.provider import (
    PaymentRequest,
    ProviderPayment,
    ProviderRefund,
    ProviderRejected,
    ProviderUnavailable,
    QrPayments,
    RefundState,
)

log = logging.getLogger(__name__)

RAZORPAY = "razorpay"
# Razorpay refuses a close_by less than two minutes ahead; 5 s more for clock skew and transit.
MIN_CLOSE_AHEAD_S = 125
# Ids we put in a URL path: Razorpay's are a prefix, "_" and letters/digits. Anything else (a
# webhook's or a database row's value gone wrong) must not reach the path.
_ID = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_NOTE_MAX = 256  # Razorpay's limit on one note value


@dataclass(frozen=True)
class RazorpayCredentials:
    key_id: str
    key_secret: str = field(repr=False)


@dataclass(frozen=True)
class QrCode:
    id: str
    status: str  # active | closed
    payment_amount: int | None
    close_by: int | None
    image_url: str | None
    image_content: str | None  # the UPI URI, on accounts with the image-content feature
    close_reason: str | None
    notes: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class RazorpayPayment:
    id: str
    status: str  # created | authorized | captured | refunded | failed
    amount: int
    currency: str
    method: str | None
    amount_refunded: int
    created_at: int | None
    raw: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class RazorpayRefund:
    id: str
    payment_id: str | None
    amount: int
    status: str  # pending | processed | failed
    raw: dict[str, Any] = field(repr=False)


def _check_id(value: str, what: str) -> str:
    if not _ID.match(value):
        raise ProviderRejected(
            f"not a Razorpay {what} id: {value[:70]!r}", http_status=0, error_code=None
        )
    return value


def _notes(values: dict[str, str | None]) -> dict[str, str]:
    return {k: v[:_NOTE_MAX] for k, v in values.items() if v is not None}


def _str(entity: dict[str, Any], key: str) -> str | None:
    value = entity.get(key)
    return value if isinstance(value, str) and value else None


def _int(entity: dict[str, Any], key: str) -> int | None:
    value = entity.get(key)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    # Razorpay's own samples carry some timestamps as strings ("close_by": "1625077799").
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _entity_id(entity: dict[str, Any], prefix: str) -> str:
    value = _str(entity, "id")
    if value is None or not value.startswith(prefix):
        raise ProviderUnavailable(f"Razorpay answered without a {prefix}... id")
    return value


def qr_code(entity: dict[str, Any]) -> QrCode:
    notes = entity.get("notes")
    return QrCode(
        id=_entity_id(entity, "qr_"),
        status=_str(entity, "status") or "",
        payment_amount=_int(entity, "payment_amount"),
        close_by=_int(entity, "close_by"),
        image_url=_str(entity, "image_url"),
        image_content=_str(entity, "image_content"),
        close_reason=_str(entity, "close_reason"),
        notes=notes if isinstance(notes, dict) else {},
        raw=entity,
    )


def payment(entity: dict[str, Any]) -> RazorpayPayment:
    amount = _int(entity, "amount")
    if amount is None:
        raise ProviderUnavailable("Razorpay answered a payment without an amount")
    return RazorpayPayment(
        id=_entity_id(entity, "pay_"),
        status=_str(entity, "status") or "",
        amount=amount,
        currency=_str(entity, "currency") or "INR",
        method=_str(entity, "method"),
        amount_refunded=_int(entity, "amount_refunded") or 0,
        created_at=_int(entity, "created_at"),
        raw=entity,
    )


def refund(entity: dict[str, Any]) -> RazorpayRefund:
    amount = _int(entity, "amount")
    if amount is None:
        raise ProviderUnavailable("Razorpay answered a refund without an amount")
    return RazorpayRefund(
        id=_entity_id(entity, "rfnd_"),
        payment_id=_str(entity, "payment_id"),
        amount=amount,
        status=_str(entity, "status") or "",
        raw=entity,
    )


class RazorpayClient:
    """One tenant's view of the API: the process's shared session, that tenant's key."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        credentials: RazorpayCredentials,
        *,
        timeout_s: float,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        # Built once here (not aiohttp's per-request ``auth=``, deprecated in 3.14).
        token = base64.b64encode(f"{credentials.key_id}:{credentials.key_secret}".encode())
        self._auth = f"Basic {token.decode('ascii')}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.key_id = credentials.key_id

    async def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        what = f"Razorpay {method} {path}"
        try:
            async with self._session.request(
                method,
                self._base + path,
                json=body,
                headers={"Authorization": self._auth, **(headers or {})},
                timeout=self._timeout,
                # Never follow a redirect with the key in the Authorization header.
                allow_redirects=False,
            ) as resp:
                status = resp.status
                text = await resp.text()
        except TimeoutError as exc:
            raise ProviderUnavailable(f"{what}: no answer in time") from exc
        except aiohttp.ClientError as exc:
            raise ProviderUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
        try:
            data = json.loads(text) if text else None
        except ValueError as exc:
            if status >= 500 or status in (409, 429):
                raise ProviderUnavailable(f"{what}: HTTP {status}") from exc
            raise ProviderUnavailable(f"{what}: HTTP {status} with an unreadable body") from exc
        if 200 <= status < 300:
            if not isinstance(data, dict):
                raise ProviderUnavailable(f"{what}: HTTP {status} without a JSON object")
            return data
        error = data.get("error") if isinstance(data, dict) else None
        error = error if isinstance(error, dict) else {}
        code = _str(error, "code")
        description = _str(error, "description") or f"HTTP {status}"
        message = f"{what}: {description}" + (f" ({code})" if code else "")
        if status >= 500 or status in (409, 429) or status < 200 or 300 <= status < 400:
            raise ProviderUnavailable(message)
        raise ProviderRejected(message, http_status=status, error_code=code)

    async def create_qr(
        self,
        *,
        amount: int,
        close_by: int,
        notes: dict[str, str | None],
        name: str,
        description: str,
    ) -> QrCode:
        body = {
            "type": "upi_qr",
            "name": name[:_NOTE_MAX],
            "usage": "single_use",
            "fixed_amount": True,
            "payment_amount": amount,
            "description": description[:_NOTE_MAX],
            "close_by": close_by,
            "notes": _notes(notes),
        }
        return qr_code(await self._request("POST", "/v1/payments/qr_codes", body))

    async def fetch_qr(self, qr_id: str) -> QrCode:
        path = f"/v1/payments/qr_codes/{_check_id(qr_id, 'QR code')}"
        return qr_code(await self._request("GET", path))

    async def close_qr(self, qr_id: str) -> QrCode:
        path = f"/v1/payments/qr_codes/{_check_id(qr_id, 'QR code')}/close"
        return qr_code(await self._request("POST", path))

    async def qr_payments(self, qr_id: str) -> list[RazorpayPayment]:
        path = f"/v1/payments/qr_codes/{_check_id(qr_id, 'QR code')}/payments"
        data = await self._request("GET", path)
        items = data.get("items")
        if not isinstance(items, list):
            raise ProviderUnavailable("Razorpay answered a payments list without items")
        return [payment(item) for item in items if isinstance(item, dict)]

    async def fetch_payment(self, payment_id: str) -> RazorpayPayment:
        path = f"/v1/payments/{_check_id(payment_id, 'payment')}"
        return payment(await self._request("GET", path))

    async def create_refund(
        self, payment_id: str, *, amount: int, refund_id: str, order_id: str | None
    ) -> RazorpayRefund:
        path = f"/v1/payments/{_check_id(payment_id, 'payment')}/refund"
        body = {"amount": amount, "notes": _notes({"refund_id": refund_id, "order_id": order_id})}
        # Our refund id is Razorpay's idempotency key: a retry after a lost answer (same key,
        # same body) gets the first refund back, never a second one.
        headers = {"X-Refund-Idempotency": refund_id}
        return refund(await self._request("POST", path, body, headers))

    async def fetch_refund(self, provider_refund_id: str) -> RazorpayRefund:
        path = f"/v1/refunds/{_check_id(provider_refund_id, 'refund')}"
        return refund(await self._request("GET", path))


def close_by_for(expires_at: datetime, now: datetime | None = None) -> int:
    """The QR code's close_by: the order's expiry, but never less than Razorpay's minimum."""
    now = now or utcnow()
    earliest = now + timedelta(seconds=MIN_CLOSE_AHEAD_S)
    return int(max(expires_at, earliest).timestamp())


def _refund_state(status: str) -> RefundState:
    if status in ("processed", "failed"):
        return status  # type: ignore[return-value]
    return "pending"


def _already_closed(exc: ProviderRejected) -> bool:
    return "closed" in str(exc).lower()


class RazorpayProvider:
    """``PaymentProvider`` for one tenant's Razorpay account."""

    name = RAZORPAY

    def __init__(self, client: RazorpayClient, merchant_name: str = "Vending machine") -> None:
        self.client = client
        self._merchant = merchant_name

    async def create(self, request: PaymentRequest) -> ProviderPayment:
        close_by = close_by_for(request.expires_at)
        qr = await self.client.create_qr(
            amount=request.amount,
            close_by=close_by,
            notes={
                "order_id": request.order_id,
                "payment_id": request.payment_id,
                "machine_id": request.machine_id,
            },
            name=self._merchant,
            description=f"Order {request.order_id}",
        )
        if qr.payment_amount is not None and qr.payment_amount != request.amount:
            # A QR code for another amount must never be shown to a customer.
            await self._close_quietly(qr.id)
            raise ProviderUnavailable(
                f"Razorpay made QR code {qr.id} for {qr.payment_amount} paise, not "
                f"{request.amount}; it was closed and nothing was charged"
            )
        return ProviderPayment(
            provider_ref=qr.id,
            qr_payload=qr.image_content,
            image_url=qr.image_url,
            expires_at=request.expires_at,
            approve_at=None,
        )

    async def _close_quietly(self, qr_id: str) -> None:
        try:
            await self.close(qr_id)
        except (ProviderUnavailable, ProviderRejected):
            log.warning("could not close QR code %s; it closes by itself at close_by", qr_id)

    async def close(self, provider_ref: str) -> None:
        try:
            await self.client.close_qr(provider_ref)
        except ProviderRejected as exc:
            # Closing a QR code that is already closed (paid single-use codes close themselves,
            # close_by passed, a second close) is refused with a 400; only that is fine.
            if _already_closed(exc):
                return
            qr = await self.client.fetch_qr(provider_ref)
            if qr.status == "closed":
                return
            raise

    async def lookup(self, provider_ref: str) -> ProviderPayment:
        qr = await self.client.fetch_qr(provider_ref)
        closes = datetime.fromtimestamp(qr.close_by, tz=UTC) if qr.close_by is not None else None
        return ProviderPayment(
            provider_ref=qr.id,
            qr_payload=qr.image_content,
            image_url=qr.image_url,
            expires_at=closes,
            approve_at=None,
        )

    async def refund(
        self,
        refund_id: str,
        provider_payment_id: str | None,
        amount: int,
        *,
        order_id: str | None = None,
    ) -> ProviderRefund:
        if provider_payment_id is None:
            raise ProviderRejected(
                f"refund {refund_id}: no Razorpay payment to refund; nothing was sent",
                http_status=0,
                error_code=None,
            )
        made = await self.client.create_refund(
            provider_payment_id, amount=amount, refund_id=refund_id, order_id=order_id
        )
        return ProviderRefund(provider_refund_id=made.id, status=_refund_state(made.status))

    async def payments_of(self, provider_ref: str) -> QrPayments:
        # Two calls, not gathered: the breaker times the whole, and the QR is asked first so a
        # payment made between the two is still seen by the second.
        qr = await self.client.fetch_qr(provider_ref)
        payments = await self.client.qr_payments(provider_ref)
        return QrPayments(qr_code=qr.raw, payments=[p.raw for p in payments])


async def new_session() -> aiohttp.ClientSession:
    """The process's session for Razorpay (a connection pool shared by every tenant)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100, limit_per_host=50),
        raise_for_status=False,
        headers={"Accept": "application/json"},
    )


__all__ = [
    "MIN_CLOSE_AHEAD_S",
    "RAZORPAY",
    "QrCode",
    "RazorpayClient",
    "RazorpayCredentials",
    "RazorpayPayment",
    "RazorpayProvider",
    "RazorpayRefund",
    "close_by_for",
    "new_session",
]
