"""Capped, jittered exponential backoff for reconnect and retry loops."""

import random


class Backoff:
    """``next()`` gives the delay before the next attempt ("full jitter"); ``reset()`` after a
    success. Jitter keeps a fleet of gateways from reconnecting in lockstep after an outage."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, *, rng: random.Random | None = None):
        if base <= 0 or cap < base:
            raise ValueError("need 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.attempts = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        ceiling = min(self.cap, self.base * (2**self.attempts))
        self.attempts += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempts = 0
