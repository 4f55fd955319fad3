"""Failures on demand for the REST endpoints: 5xx answers, hangs and slow answers.

A rule matches an endpoint name (or ``*``) and fires for ``count`` requests (None: until
cleared). ``when="after"`` lets the operation happen and then fails the answer, the case where
the provider did the work but the client never heard (a refund retried with its idempotency key
must then get the same refund back).
"""

from dataclasses import asdict, dataclass
from typing import Any, Literal

from tools.razorpay_server.errors import ControlError

ENDPOINTS = frozenset(
    {
        "qr_create",
        "qr_get",
        "qr_close",
        "qr_payments",
        "payment_get",
        "refund_create",
        "refund_get",
        "refund_list",
        "*",
    }
)
MODES = frozenset({"error_500", "error_502", "error_503", "timeout", "delay"})
Mode = Literal["error_500", "error_502", "error_503", "timeout", "delay"]


@dataclass
class Fault:
    endpoint: str
    mode: str
    count: int | None = None
    delay_s: float = 30.0
    when: str = "before"
    fired: int = 0

    def public(self) -> dict[str, Any]:
        return asdict(self)


class FaultTable:
    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(
        self,
        endpoint: str,
        mode: str,
        *,
        count: int | None = None,
        delay_s: float | None = None,
        when: str = "before",
    ) -> Fault:
        if endpoint not in ENDPOINTS:
            raise ControlError(
                f"endpoint must be one of {', '.join(sorted(ENDPOINTS))}", field="endpoint"
            )
        if mode not in MODES:
            raise ControlError(f"mode must be one of {', '.join(sorted(MODES))}", field="mode")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise ControlError("count must be a positive integer or null", field="count")
        if when not in ("before", "after"):
            raise ControlError("when must be before or after", field="when")
        if delay_s is None:
            # A "timeout" hangs longer than any sane client timeout; a "delay" is noticeable.
            delay_s = 60.0 if mode == "timeout" else 1.0
        if delay_s < 0:
            raise ControlError("delay_s must not be negative", field="delay_s")
        fault = Fault(endpoint, mode, count, float(delay_s), when)
        self._faults.append(fault)
        return fault

    def clear(self) -> int:
        n = len(self._faults)
        self._faults.clear()
        return n

    def take(self, endpoint: str, when: str) -> Fault | None:
        """The first live rule for this endpoint and phase, spending one of its count."""
        for fault in self._faults:
            if fault.when != when or fault.endpoint not in (endpoint, "*"):
                continue
            fault.fired += 1
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    self._faults.remove(fault)
            return fault
        return None

    def public(self) -> list[dict[str, Any]]:
        return [f.public() for f in self._faults]
