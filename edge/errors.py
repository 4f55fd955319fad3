"""The gateway's exception tree: one root, narrow subclasses, translated once at the edge."""


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class CloudUnavailable(GatewayError):
    """The cloud cannot be reached now (network, TLS, 5xx); the caller may retry later."""


class CloudRejected(GatewayError):
    """The cloud answered with a 4xx: retrying the same request will not help."""


class CloudRefusedRequest(CloudRejected):
    """The cloud refused the request with an HTTP error status (its envelope's code and
    message kept), as opposed to an answer the gateway could not read."""

    def __init__(self, text: str, *, status: int, code: str, message: str) -> None:
        super().__init__(text)
        self.status = status
        self.code = code
        self.message = message


class NotEnrolled(GatewayError):
    """The gateway has no client certificate yet and no enrolment token to get one."""


class StoreError(GatewayError):
    """The gateway's database could not do what was asked (disk full, corrupt, closed)."""


class OrderError(GatewayError):
    """An order request cannot be honoured; subclasses map to HTTP status codes."""


class MachineNotFound(OrderError):
    """No active machine with that id at this site."""


class OrderNotFound(OrderError):
    """No order with that id."""


class CatalogItemNotFound(OrderError):
    """An ordered item is not in the machine's active catalog."""


class InsufficientStock(OrderError):
    """Fewer units are available than ordered."""


class OrderConflict(OrderError):
    """The order is not in a state that allows the request (e.g. cancel after payment)."""


class MachineBusy(OrderConflict):
    """The machine's open cash order already holds inserted cash: a second cash order would take
    the next coins from that customer, so it is refused until the open order ends.

    A subclass of ``OrderConflict`` so every edge already answers it with 409."""


class SlotDisabled(OrderConflict):
    """An ordered item's slot is switched off (failed dispenses in a row, or an operator):
    nothing is sold from it until a technician or operator enables it again. A subclass of
    ``OrderConflict`` so every edge already answers 409; the kiosk API names it
    ``slot_disabled``."""

    def __init__(self, catalog_item_id: str, slot: str, reason: str | None) -> None:
        super().__init__(
            f"slot {slot} ({catalog_item_id}) is disabled"
            + (f" ({reason})" if reason else "")
            + ": it is not sold until a technician or operator enables it again"
        )
        self.catalog_item_id = catalog_item_id
        self.slot = slot
        self.reason = reason


class OrderTokenError(OrderError):
    """Cancelling or superseding an order needs the secret ``order_token`` its creation
    returned (answered with 403)."""


class OrderTokenRequired(OrderTokenError):
    """The request carries no order token."""


class OrderTokenInvalid(OrderTokenError):
    """The request's order token is not this order's."""


class OrderTooLarge(OrderError):
    """The order alone holds more units than one client may reserve: no wait would help."""


class ClientLimitExceeded(OrderError):
    """One kiosk API client (peer address) is over a limit: open orders, reserved units or
    order creations per minute. Answered with 429 and ``Retry-After``."""

    def __init__(self, reason: str, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = max(int(retry_after_s), 1)


class IdempotencyConflict(OrderError):
    """The Idempotency-Key was used before with a different request body."""


class PaymentUnavailable(OrderError):
    """The payment provider cannot be reached; the order was cancelled and its stock released.

    ``reason``: offline (no cloud link), payment_service_unavailable (the payments breaker is
    open, or the cloud or its provider failed), not_enabled (no UPI for this tenant), refused."""

    def __init__(
        self, message: str, *, reason: str = "payment_service_unavailable",
        retry_in_s: float | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.reason = reason
        self.retry_in_s = retry_in_s


class BrokerStartError(GatewayError):
    """The embedded MQTT broker could not start (port taken, bad config)."""


class DeviceLinkError(GatewayError):
    """The gateway's MQTT client cannot reach the broker or publish."""
