"""The shared circuit breaker, driven by an injected clock: no sleeps, no timing assertions."""

import asyncio

import pytest

from contracts.breaker import CircuitBreaker, CircuitOpen


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Boom(Exception):
    pass


class Answered(Exception):
    """The dependency answered with an error that is not its fault (not a failure type)."""


async def ok() -> str:
    return "ok"


async def boom() -> str:
    raise Boom("down")


def make(clock: Clock, changes: list[tuple[str, str, str]] | None = None) -> CircuitBreaker:
    return CircuitBreaker(
        "payments",
        failure_threshold=3,
        recovery_s=10.0,
        call_timeout_s=0.05,
        failure_types=(Boom,),
        clock=clock,
        on_change=(lambda *c: changes.append(c)) if changes is not None else None,
    )


async def fail_times(breaker: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        with pytest.raises(Boom):
            await breaker.call(boom)


async def test_opens_after_threshold_consecutive_failures() -> None:
    clock = Clock()
    changes: list[tuple[str, str, str]] = []
    breaker = make(clock, changes)
    await fail_times(breaker, 2)
    assert breaker.state == "closed" and breaker.allows()
    assert breaker.snapshot()["consecutive_failures"] == 2
    await fail_times(breaker, 1)
    assert breaker.state == "open"
    assert not breaker.allows()
    assert changes == [("payments", "closed", "open")]
    snap = breaker.snapshot()
    assert snap["opened_total"] == 1 and snap["retry_in_s"] == 10.0


async def test_a_success_resets_the_count() -> None:
    breaker = make(Clock())
    await fail_times(breaker, 2)
    assert await breaker.call(ok) == "ok"
    await fail_times(breaker, 2)
    assert breaker.state == "closed"


async def test_fails_fast_while_open_without_calling() -> None:
    clock = Clock()
    breaker = make(clock)
    await fail_times(breaker, 3)
    called = []

    async def tracked() -> str:
        called.append(1)
        return "ok"

    clock.now += 4.0
    with pytest.raises(CircuitOpen) as info:
        await breaker.call(tracked)
    assert called == []
    assert info.value.name == "payments"
    assert info.value.retry_in_s == pytest.approx(6.0)


async def test_half_open_lets_one_probe_through_and_success_closes() -> None:
    clock = Clock()
    changes: list[tuple[str, str, str]] = []
    breaker = make(clock, changes)
    await fail_times(breaker, 3)
    clock.now += 10.0
    assert breaker.state == "half_open" and breaker.allows()

    release = asyncio.Event()

    async def slow_ok() -> str:
        await release.wait()
        return "probed"

    probe = asyncio.create_task(breaker.call(slow_ok))
    await asyncio.sleep(0)  # let the probe start (a yield, not a wait for time)
    assert not breaker.allows()
    with pytest.raises(CircuitOpen):
        await breaker.call(ok)
    release.set()
    assert await probe == "probed"
    assert breaker.state == "closed" and breaker.allows()
    assert breaker.snapshot()["consecutive_failures"] == 0
    assert changes == [
        ("payments", "closed", "open"),
        ("payments", "open", "half_open"),
        ("payments", "half_open", "closed"),
    ]


async def test_half_open_probe_failure_reopens_for_a_full_recovery() -> None:
    clock = Clock()
    breaker = make(clock)
    await fail_times(breaker, 3)
    clock.now += 10.0
    await fail_times(breaker, 1)
    assert breaker.state == "open"
    assert breaker.snapshot()["opened_total"] == 2
    clock.now += 9.9
    assert not breaker.allows()
    clock.now += 0.1
    assert breaker.allows()


async def test_timeouts_count_as_failures_and_reraise() -> None:
    breaker = make(Clock())
    never = asyncio.Event()

    async def hang() -> str:
        await never.wait()
        return "never"

    for _ in range(3):
        with pytest.raises(TimeoutError):
            await breaker.call(hang)
    assert breaker.state == "open"


async def test_other_errors_mean_the_dependency_answered() -> None:
    clock = Clock()
    breaker = make(clock)

    async def answered() -> str:
        raise Answered("400 bad request")

    await fail_times(breaker, 2)
    with pytest.raises(Answered):
        await breaker.call(answered)
    assert breaker.snapshot()["consecutive_failures"] == 0
    # ... and as a half-open probe it closes the breaker.
    await fail_times(breaker, 3)
    clock.now += 10.0
    with pytest.raises(Answered):
        await breaker.call(answered)
    assert breaker.state == "closed"


async def test_a_cancelled_probe_frees_the_slot() -> None:
    clock = Clock()
    breaker = make(clock)
    await fail_times(breaker, 3)
    clock.now += 10.0
    never = asyncio.Event()

    async def hang() -> str:
        await never.wait()
        return "never"

    probe = asyncio.create_task(breaker.call(hang))
    await asyncio.sleep(0)
    assert not breaker.allows()
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert breaker.state == "half_open" and breaker.allows()
    assert await breaker.call(ok) == "ok"
    assert breaker.state == "closed"


async def test_a_stale_success_does_not_close_an_open_breaker() -> None:
    clock = Clock()
    breaker = make(clock)
    release = asyncio.Event()

    async def slow_ok() -> str:
        await release.wait()
        return "late"

    slow = asyncio.create_task(breaker.call(slow_ok))
    await asyncio.sleep(0)
    await fail_times(breaker, 3)
    release.set()
    assert await slow == "late"
    assert breaker.state == "open"


async def test_a_failing_hook_does_not_break_the_call() -> None:
    def bad_hook(name: str, old: str, new: str) -> None:
        raise RuntimeError("metrics down")

    breaker = CircuitBreaker(
        "x", failure_threshold=1, failure_types=(Boom,), clock=Clock(), on_change=bad_hook
    )
    with pytest.raises(Boom):
        await breaker.call(boom)
    assert breaker.state == "open"
