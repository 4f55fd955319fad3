"""What the sync client needs from the gateway's store (implemented by ``edge.store``).

Every method persists before it returns, so the sync client may acknowledge to the cloud (channel
messages) or forget (outbox events) only after the call has completed.
"""

from typing import Protocol

from contracts.sync import (
    OutboxEvent,
    PaymentCreate,
    PaymentIntent,
    PaymentUpdate,
    RefundUpdate,
    RejectedEvent,
    StateResponse,
)


class SyncStore(Protocol):
    async def outbox_pending(self, limit: int) -> list[OutboxEvent]:
        """Oldest unsent outbox events (seq ascending), at most ``limit``."""
        ...

    async def outbox_acknowledged(self, ack_seq: int) -> None:
        """The cloud durably holds every event with ``seq <= ack_seq``; mark them sent."""
        ...

    async def outbox_settled(self, ack_seq: int, rejected: list[RejectedEvent]) -> int:
        """In one transaction: move the events the cloud rejected (it keeps them as dead
        letters) into the gateway's dead letters, then mark the rest up to ``ack_seq`` sent.
        Returns how many were moved."""
        ...

    async def dead_letter(self, event_id: str, status: int | None, code: str, error: str) -> bool:
        """Move one unsent event the cloud refused alone into the dead letters."""
        ...

    async def outbox_backlog(self) -> int:
        """How many events are waiting to be sent (for health and metrics)."""
        ...

    async def state_cursor(self) -> int:
        """Cursor of the last state pull applied (0 before the first)."""
        ...

    async def apply_state(self, state: StateResponse) -> None:
        """Upsert machines, credentials and catalog from a pull, then store ``state.cursor``."""
        ...

    async def apply_payment_update(self, message_id: str, update: PaymentUpdate) -> None:
        """Record a payment confirmation (idempotent by ``message_id`` and ``payment_id``) and move
        the order on; the vend engine is woken by the store's change notification."""
        ...

    async def apply_refund_update(self, message_id: str, update: RefundUpdate) -> None:
        """Record where a refund stands (idempotent by ``message_id``; final states stay)."""
        ...

    async def wait_outbox(self, max_wait: float) -> None:
        """Return when new outbox events may be waiting, or after ``max_wait`` seconds."""
        ...


class PaymentsPort(Protocol):
    """How the vend engine asks the cloud for a payment (implemented by ``CloudLink``)."""

    async def create_payment(self, request: PaymentCreate) -> PaymentIntent:
        """Raises ``edge.errors.CloudUnavailable`` (unreachable, or a 5xx such as the cloud's
        503 ``provider_unavailable`` while its own provider breaker is open: counted against the
        gateway's ``gateway_payments`` breaker) or ``edge.errors.CloudRejected`` (a 4xx: the
        cloud answered, not counted). The vend engine bounds the call with its own timeout."""
        ...
