"""Errors of the Razorpay test server.

``ApiError`` is what a handler raises to answer in Razorpay's documented error envelope; the
other classes are failures of the server itself (start-up, control requests from a test).
"""

from typing import Any


class RazorpayServerError(Exception):
    """Root of every error this package raises."""


class ApiError(RazorpayServerError):
    """A request the (simulated) Razorpay refuses. Rendered as
    ``{"error": {"code", "description", "source", "step", "reason", "metadata", "field"?}}``."""

    def __init__(
        self,
        status: int,
        description: str,
        *,
        code: str = "BAD_REQUEST_ERROR",
        field: str | None = None,
        source: str = "NA",
        step: str = "NA",
        reason: str = "NA",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(description)
        self.status = status
        self.code = code
        self.description = description
        self.field = field
        self.source = source
        self.step = step
        self.reason = reason
        self.metadata = metadata or {}

    def envelope(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "code": self.code,
            "description": self.description,
            "source": self.source,
            "step": self.step,
            "reason": self.reason,
            "metadata": self.metadata,
        }
        if self.field is not None:
            body["field"] = self.field
        return {"error": body}


class BadRequest(ApiError):
    """400 BAD_REQUEST_ERROR, the answer to every invalid input."""

    def __init__(self, description: str, *, field: str | None = None, **kwargs: Any) -> None:
        super().__init__(400, description, field=field, **kwargs)


class InputInvalid(BadRequest):
    """400 for a request field that fails validation (Razorpay marks these
    source=business, step=payment_initiation, reason=input_validation_failed)."""

    def __init__(self, description: str, *, field: str | None = None) -> None:
        super().__init__(
            description,
            field=field,
            source="business",
            step="payment_initiation",
            reason="input_validation_failed",
        )


class NotFound(BadRequest):
    """Razorpay answers an unknown (or another account's) id with 400, not 404."""

    def __init__(self) -> None:
        super().__init__("The id provided does not exist")


class AuthFailed(ApiError):
    """401 for a missing or wrong key id / key secret."""

    def __init__(self) -> None:
        super().__init__(401, "Authentication failed")


class ServerStartError(RazorpayServerError):
    """The server could not bind or start."""


class ControlError(BadRequest):
    """A test-control call (``/_test`` or the library API) was invalid; over HTTP it is answered
    with the same 400 envelope so scripts need one error parser."""

    def __init__(self, description: str, *, field: str | None = None) -> None:
        super().__init__(description, field=field)
