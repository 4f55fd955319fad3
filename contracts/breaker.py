"""A small asyncio circuit breaker shared by the cloud (calls to the payment provider) and the
gateway (calls to the cloud for payments).

Why not ``purgatory`` (3.0.1, evaluated from its source): its state model reads ``time.time()``
directly (no injectable clock, so tests would have to sleep and a wall-clock step opens or closes
circuits), its half-open state lets *every* concurrent request through instead of one probe, it
has no per-call timeout (a hung call is never a failure), asking "would a call go through now?"
is only possible by entering the context and catching the raised state, and state changes reach
listeners through an async message bus rather than a plain callback. Wrapping it would mean
re-implementing most of it around it, so this module is ours: about a hundred lines, one lock-free
state machine (asyncio is single-threaded; every transition happens between awaits).

States: ``closed`` (calls go through; ``failure_threshold`` consecutive failures open it),
``open`` (calls raise :class:`CircuitOpen` at once until ``recovery_s`` has passed), ``half_open``
(exactly one probe call goes through; its success closes the breaker, its failure re-opens it;
other calls meanwhile fail fast). A timeout (``call_timeout_s``) or an exception that is an
instance of ``failure_types`` is a failure and is re-raised unchanged. Any other exception means
the dependency answered (e.g. a 4xx the caller raises as its own type): it is re-raised and counts
as a success for the breaker.

The open -> half_open transition is time-based: :attr:`CircuitBreaker.state`, :meth:`allows` and
:meth:`snapshot` report ``half_open`` as soon as ``recovery_s`` has passed (without side
effects), and ``on_change(name, "open", "half_open")`` fires when the next call takes the probe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

T = TypeVar("T")

BreakerState = Literal["closed", "open", "half_open"]

log = logging.getLogger(__name__)


class CircuitOpen(Exception):
    """The breaker refused the call without running it."""

    def __init__(self, name: str, retry_in_s: float) -> None:
        super().__init__(f"circuit {name!r} is open; retry in {retry_in_s:.1f} s")
        self.name = name
        self.retry_in_s = retry_in_s


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 3,
        recovery_s: float = 15.0,
        call_timeout_s: float = 5.0,
        failure_types: tuple[type[BaseException], ...] = (Exception,),
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, str, str], None] | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if recovery_s < 0 or call_timeout_s <= 0:
            raise ValueError("recovery_s must be >= 0 and call_timeout_s > 0")
        self.name = name
        self.failure_threshold = failure_threshold
        self.recovery_s = recovery_s
        self.call_timeout_s = call_timeout_s
        self.failure_types = failure_types
        self._clock = clock
        self._on_change = on_change
        self._state: BreakerState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._opened_total = 0
        # When a half-open probe is running: the clock reading it started at.
        self._probe_started: float | None = None
        # Bumped on every transition: a call that started in an earlier state (e.g. a slow call
        # still running when the breaker opened) must not close or re-count the newer state.
        self._generation = 0

    # -- reading -------------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        if self._state == "open" and self._clock() >= self._opened_at + self.recovery_s:
            return "half_open"
        return self._state

    def allows(self) -> bool:
        """Would a call go through now? No side effects."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open":
            return self._probe_started is None
        return False

    def retry_in_s(self) -> float:
        now = self._clock()
        if self.state == "open":
            return max(0.0, self._opened_at + self.recovery_s - now)
        if self._probe_started is not None:
            return max(0.0, self._probe_started + self.call_timeout_s - now)
        return 0.0

    def snapshot(self) -> dict[str, object]:
        return {
            "name": self.name,
            "state": self.state,
            "consecutive_failures": self._failures,
            "retry_in_s": round(self.retry_in_s(), 3),
            "opened_total": self._opened_total,
            "failure_threshold": self.failure_threshold,
            "recovery_s": self.recovery_s,
        }

    # -- calling -------------------------------------------------------------------------------

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        if not self.allows():
            raise CircuitOpen(self.name, self.retry_in_s())
        if self.state == "half_open":
            if self._state == "open":
                self._transition("half_open")
            self._probe_started = self._clock()
        generation = self._generation
        try:
            async with asyncio.timeout(self.call_timeout_s):
                result = await fn()
        except asyncio.CancelledError:
            # Neither a success nor a failure: free the probe slot so the next call probes.
            if generation == self._generation:
                self._probe_started = None
            raise
        except BaseException as exc:
            if isinstance(exc, (TimeoutError, *self.failure_types)):
                self._record_failure(generation)
            else:
                self._record_success(generation)
            raise
        self._record_success(generation)
        return result

    def _record_success(self, generation: int) -> None:
        if generation != self._generation:
            return
        self._failures = 0
        if self._state == "half_open":
            self._probe_started = None
            self._transition("closed")

    def _record_failure(self, generation: int) -> None:
        if generation != self._generation:
            return
        self._failures += 1
        if self._state == "half_open" or self._failures >= self.failure_threshold:
            self._probe_started = None
            self._opened_at = self._clock()
            self._opened_total += 1
            self._transition("open")

    def _transition(self, new: BreakerState) -> None:
        old = self._state
        self._state = new
        self._generation += 1
        if new == "closed":
            self._failures = 0
        if old == new or self._on_change is None:
            return
        try:
            self._on_change(self.name, old, new)
        except Exception:
            # A metrics or logging hook must never turn a payment call into an error.
            log.exception("circuit breaker %s: on_change hook failed", self.name)
