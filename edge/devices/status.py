"""Presence and health writes, coalesced per machine and written in groups.

Each health message (every device, every ``health_interval_s``) and each presence used to cost
the device link one store transaction that it awaited before reading the next message: with
``synchronous=FULL`` that is one fsync per message, one after another, so 1,000 devices
reconnecting at once queued 2,000 commits in front of every money event behind them. Nothing
waits on these writes (health is QoS 0; presence only updates ``online``/``fw``/``last_seen``),
so the link hands them here and goes on: the latest state of each machine is kept, and one
background task writes everything pending at once (the store's writer commits them in one
group), then takes what arrived meanwhile. Per machine the writes stay in order (a machine is
in at most one batch at a time); money events never go through here.
"""

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from edge.store import GatewayStore

log = logging.getLogger(__name__)

# How long a stopping link waits for pending presence/health writes.
CLOSE_TIMEOUT_S = 5.0


@dataclass
class _Pending:
    presence: bool  # False: a health touch only
    online: bool = False
    fw: str | None = None


class StatusWriter:
    def __init__(self, store: GatewayStore) -> None:
        self._store = store
        self._pending: dict[str, _Pending] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="device-status-writer")

    async def close(self) -> None:
        """Write what is pending (bounded), then stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.flush()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def flush(self) -> None:
        """Return once everything handed in so far is written (or failed and logged)."""
        while not self._idle.is_set():
            await self._idle.wait()

    def presence(self, machine_id: str, online: bool, fw: str | None) -> None:
        earlier = self._pending.get(machine_id)
        if fw is None and earlier is not None and earlier.presence:
            fw = earlier.fw  # the store keeps the old fw when none is given: same here
        self._pending[machine_id] = _Pending(True, online, fw)
        self._kick()

    def touch(self, machine_id: str) -> None:
        if machine_id not in self._pending:  # a pending presence sets last_seen as well
            self._pending[machine_id] = _Pending(False)
        self._kick()

    def _kick(self) -> None:
        self._idle.clear()
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, {}
            if batch:
                results = await asyncio.gather(
                    *(self._write(machine_id, update) for machine_id, update in batch.items()),
                    return_exceptions=True,
                )
                failed = [r for r in results if isinstance(r, Exception)]
                if failed:
                    log.warning("%d presence/health writes failed: %r", len(failed), failed[0])
            if not self._pending:
                self._idle.set()

    async def _write(self, machine_id: str, update: _Pending) -> None:
        if update.presence:
            await self._store.set_presence(machine_id, update.online, update.fw)
        else:
            await self._store.touch_machine(machine_id)
