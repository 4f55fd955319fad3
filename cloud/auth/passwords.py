"""Password hashing with argon2id, off the event loop and with bounded concurrency.

argon2 is deliberately slow and memory-hungry. Hashes run on a small thread pool of their own
(argon2-cffi releases the GIL), never more than ``concurrency`` at once; a caller waits for a
slot at most ``wait_s`` and then gets 503. So a burst of guesses queues behind itself instead of
taking every CPU and the shared default executor from other users' requests."""

import asyncio
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from cloud.errors import ServiceBusy
from cloud.settings import CloudSettings

# Verified when the e-mail is unknown, so both failures take the same time.
_DUMMY_PASSWORD = "not-a-real-password"
T = TypeVar("T")


class Passwords:
    def __init__(
        self,
        time_cost: int,
        memory_cost: int,
        parallelism: int,
        *,
        concurrency: int = 1,
        wait_s: float = 10.0,
    ) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism
        )
        self._dummy: str | None = None
        self.verifications = 0
        self._concurrency = concurrency
        self._wait_s = wait_s
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="argon2")
        # One semaphore per event loop: a semaphore belongs to the loop it first waits on.
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def from_settings(cls, settings: CloudSettings) -> "Passwords":
        return cls(
            settings.password_hash_time_cost,
            settings.password_hash_memory_cost,
            settings.password_hash_parallelism,
            concurrency=settings.password_hash_concurrency,
            wait_s=settings.password_hash_wait_s,
        )

    async def _run(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        slots = self._slots.get(loop)
        if slots is None:
            slots = self._slots[loop] = asyncio.Semaphore(self._concurrency)
        try:
            await asyncio.wait_for(slots.acquire(), self._wait_s)
        except TimeoutError as exc:
            raise ServiceBusy("password checks are busy; try again shortly") from exc
        try:
            return await loop.run_in_executor(self._pool, fn)
        finally:
            slots.release()

    async def hash(self, password: str) -> str:
        return await self._run(lambda: self._hasher.hash(password))

    async def verify(self, stored: str | None, password: str) -> bool:
        # Counted (dummies included): the tests check that every login does the same work.
        self.verifications += 1
        if stored is None:
            if self._dummy is None:
                self._dummy = await self.hash(_DUMMY_PASSWORD)
            dummy = self._dummy
            await self._run(lambda: self._check(dummy, password))
            return False
        return await self._run(lambda: self._check(stored, password))

    def _check(self, stored: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
