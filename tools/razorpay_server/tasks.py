"""Background tasks owned by a ``TaskGroup``: named, tracked, cancelled and awaited on exit.

A task that fails is logged and does not tear down its siblings (a webhook that could not be
delivered must not stop refunds from settling).
"""

import asyncio
import logging
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)


class TaskOwner:
    def __init__(self, name: str, *, close_timeout_s: float = 5.0) -> None:
        self.name = name
        self._close_timeout_s = close_timeout_s
        self._group: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    async def __aenter__(self) -> "TaskOwner":
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        assert self._group is not None
        async with asyncio.timeout(self._close_timeout_s):
            await self._group.__aexit__(exc_type, exc, tb)

    @property
    def running(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None] | None:
        """Run ``coro`` in the group; None (and the coroutine closed) once shutting down."""
        if self._group is None or self._closing:
            coro.close()
            return None
        task = self._group.create_task(self._guard(coro, name), name=f"{self.name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guard(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task %s:%s failed", self.name, name)
