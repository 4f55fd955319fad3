"""Waiting for a condition in tests: poll it, with an overall deadline, never a bare sleep.

Shared by every test folder (``tests/shared`` is on pytest's ``pythonpath``).
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


async def wait_for(
    probe: Callable[[], Awaitable[Any]], *, within: float = 20.0, interval: float = 0.05
) -> Any:
    """Poll ``probe`` until it returns something truthy and return that; fail after ``within``
    seconds with ``TimeoutError``."""
    async with asyncio.timeout(within):
        while True:
            value = await probe()
            if value:
                return value
            await asyncio.sleep(interval)
