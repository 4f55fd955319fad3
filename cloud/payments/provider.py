"""What the cloud needs from a payment provider. ``sandbox`` now; Razorpay later."""

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class PaymentRequest:
    payment_id: str
    order_id: str
    amount: int  # paise
    currency: str


@dataclass(frozen=True)
class ProviderPayment:
    provider_ref: str | None
    qr_payload: str | None
    expires_at: datetime | None
    # When the provider will have captured by itself (sandbox); None for webhook-driven ones.
    approve_at: datetime | None


@dataclass(frozen=True)
class ProviderRefund:
    provider_ref: str
    status: str


class PaymentProvider(Protocol):
    name: str

    async def create(self, request: PaymentRequest) -> ProviderPayment:
        """Open a payment with the provider. Raises ``IntegrationFailed`` when it is unreachable."""
        ...

    async def refund(
        self, payment_id: str, amount: int, idempotency_key: str
    ) -> ProviderRefund: ...

    async def parse_webhook(self, raw_body: bytes, headers: dict[str, str]) -> dict[str, object]:
        """Verify a webhook over its raw body and return its event; raises ``Unauthorized``."""
        ...
