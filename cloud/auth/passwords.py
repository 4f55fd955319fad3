"""Password hashing with argon2id, run off the event loop (it is deliberately slow)."""

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from cloud.settings import CloudSettings

# Verified when the e-mail is unknown, so both failures take the same time.
_DUMMY_PASSWORD = "not-a-real-password"


class Passwords:
    def __init__(self, time_cost: int, memory_cost: int, parallelism: int) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism
        )
        self._dummy: str | None = None

    @classmethod
    def from_settings(cls, settings: CloudSettings) -> "Passwords":
        return cls(
            settings.password_hash_time_cost,
            settings.password_hash_memory_cost,
            settings.password_hash_parallelism,
        )

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        if stored is None:
            if self._dummy is None:
                self._dummy = await self.hash(_DUMMY_PASSWORD)
            await asyncio.to_thread(self._check, self._dummy, password)
            return False
        return await asyncio.to_thread(self._check, stored, password)

    def _check(self, stored: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False
