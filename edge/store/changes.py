"""Change notifications from the store to its readers on the event loop (SSE, vend engine)."""

import asyncio
import contextlib
from collections import OrderedDict

# Orders not changed for this many changes are forgotten; a waiter on one still wakes at its
# next change, because a forgotten order counts as 0 until it changes again.
_REMEMBERED = 10_000


class ChangeFeed:
    """A sequence number per order that grows on every committed change.

    Waiters compare against the number they last saw, so a change that lands between their read
    and their wait is never missed.
    """

    def __init__(self) -> None:
        self._seq = 0
        self._last: OrderedDict[str, int] = OrderedDict()
        self._cond = asyncio.Condition()

    @property
    def seq(self) -> int:
        return self._seq

    def order_seq(self, order_id: str) -> int:
        return self._last.get(order_id, 0)

    async def publish(self, order_ids: list[str]) -> None:
        async with self._cond:
            self._seq += 1
            for order_id in order_ids:
                self._last[order_id] = self._seq
                self._last.move_to_end(order_id)
            while len(self._last) > _REMEMBERED:
                self._last.popitem(last=False)
            self._cond.notify_all()

    async def wait_order(self, order_id: str, seen: int, max_wait: float) -> int:
        """Wait until ``order_id`` changed after ``seen`` (or ``max_wait``); its current number."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max_wait), self._cond:
                await self._cond.wait_for(lambda: self._last.get(order_id, 0) > seen)
        return self._last.get(order_id, 0)

    async def wait_any(self, seen: int, max_wait: float) -> int:
        """Wait until anything changed after ``seen`` (or ``max_wait``); the current number."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max_wait), self._cond:
                await self._cond.wait_for(lambda: self._seq > seen)
        return self._seq
