"""What the cloud needs from a payment provider, and the errors every provider raises.

Two providers fit it: ``sandbox`` (captures by itself, for tests and the demo without a
provider) and ``razorpay`` (a UPI QR code per payment, captured when the customer pays).
Webhooks are not part of this interface: they are verified with the tenant's webhook secret
(``cloud.payments.registry.webhook_secret``) by ``cloud.payments.webhooks``.
"""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from cloud.errors import Conflict, IntegrationFailed


class ProviderUnavailable(IntegrationFailed):
    """The provider could not be reached or could not answer now (timeout, connection error,
    5xx, a 409 "request still in progress", 429), or its circuit breaker is open. Nothing was
    decided at the provider that we know of: the call may be retried (same idempotency key)."""

    status = 503
    code = "provider_unavailable"

    def __init__(self, message: str, *, retry_after_s: float = 5.0) -> None:
        super().__init__(message, details={"retry_after_s": round(retry_after_s, 1)})
        self.retry_after_s = retry_after_s
        self.headers["Retry-After"] = str(max(1, round(retry_after_s)))


class ProviderRejected(IntegrationFailed):
    """The provider answered and refused the request (4xx): bad credentials, a bad amount, an
    already closed QR code. Retrying the same request gets the same answer."""

    status = 502
    code = "provider_rejected"

    def __init__(self, message: str, *, http_status: int, error_code: str | None) -> None:
        super().__init__(message, details={"http_status": http_status, "error_code": error_code})
        self.http_status = http_status
        self.error_code = error_code


class ProviderNotConfigured(Conflict):
    """The tenant has no (enabled) electronic payment provider: UPI cannot be offered."""

    code = "provider_not_configured"


@dataclass(frozen=True)
class PaymentRequest:
    payment_id: str
    order_id: str
    machine_id: str
    amount: int  # paise
    currency: str
    # When the order stops waiting for this payment; the provider closes its QR code no earlier.
    expires_at: datetime


@dataclass(frozen=True)
class ProviderPayment:
    """A payment opened at the provider (for Razorpay: a single-use QR code)."""

    provider_ref: str | None  # Razorpay: the qr_... id
    qr_payload: str | None  # a UPI intent URI the kiosk renders as a QR code, when given
    expires_at: datetime | None
    # When the provider will have captured by itself (sandbox); None for webhook-driven ones.
    approve_at: datetime | None
    image_url: str | None = None  # the provider's hosted QR image


RefundState = Literal["pending", "processed", "failed"]


@dataclass(frozen=True)
class ProviderRefund:
    provider_refund_id: str | None  # Razorpay: rfnd_...
    status: RefundState  # the provider's word; processed = the money went back


@dataclass(frozen=True)
class QrPayments:
    """What the provider knows of one QR code and the payments made on it (raw entities, as a
    webhook would carry them, for ``cloud.payments.captures.apply_provider_payment``)."""

    qr_code: dict[str, Any]
    payments: list[dict[str, Any]] = field(default_factory=list)


class PaymentProvider(Protocol):
    name: str

    async def create(self, request: PaymentRequest) -> ProviderPayment:
        """Open a payment. Raises ``ProviderUnavailable`` / ``ProviderRejected``."""
        ...

    async def close(self, provider_ref: str) -> None:
        """Stop the payment being payable. Closing one already closed (or paid) is fine."""
        ...

    async def lookup(self, provider_ref: str) -> ProviderPayment:
        """The payment as opened (QR image, URI, close time), asked of the provider again."""
        ...

    async def refund(
        self,
        refund_id: str,
        provider_payment_id: str | None,
        amount: int,
        *,
        order_id: str | None = None,
    ) -> ProviderRefund:
        """Give ``amount`` of the provider payment back. ``refund_id`` is the idempotency key:
        calling again with it never refunds twice."""
        ...

    async def payments_of(self, provider_ref: str) -> QrPayments:
        """The QR code and the payments made on it (polling when webhooks are late)."""
        ...
