"""The cloud's error tree. Raised anywhere, translated once into the HTTP envelope."""

from typing import Any


class CloudError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        # Extra response headers (``Retry-After`` on 429 and 503).
        self.headers: dict[str, str] = {}


class ValidationFailed(CloudError):
    status = 400
    code = "validation_error"


class UnsupportedKey(ValidationFailed):
    """A CSR whose public key is not one the cloud signs (curve, algorithm or size)."""

    code = "unsupported_key"


class Unauthorized(CloudError):
    status = 401
    code = "unauthorized"


class Forbidden(CloudError):
    status = 403
    code = "forbidden"


class NotFound(CloudError):
    status = 404
    code = "not_found"


class Conflict(CloudError):
    status = 409
    code = "conflict"


class EventIdConflict(Conflict):
    """A pushed event, credit or command id is already stored for another gateway or machine."""

    code = "event_id_conflict"


class TooManyRequests(CloudError):
    """Login throttling: wait ``retry_after_s`` seconds before trying again."""

    status = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, details={"retry_after_s": retry_after_s})
        self.headers["Retry-After"] = str(retry_after_s)


class ServiceBusy(CloudError):
    """Every password-hashing slot stayed busy for the whole wait."""

    status = 503
    code = "busy"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, details={"retry_after_s": retry_after_s})
        self.headers["Retry-After"] = str(retry_after_s)


class IntegrationFailed(CloudError):
    status = 502
    code = "integration_error"


class ConfigurationError(CloudError):
    """Bad settings or data directory; fatal at start."""


class Gone(CloudError):
    """Existed once, never again: a used or expired one-time claim."""

    status = 410
    code = "gone"
