"""In-process wake-ups for channel senders and workers. Other cloud processes are covered by
the senders' periodic database poll, so a missed wake-up only costs latency."""

import asyncio
from collections import defaultdict
from collections.abc import Iterable


class ChannelHub:
    def __init__(self) -> None:
        self._events: dict[str, set[asyncio.Event]] = defaultdict(set)
        # Set when work for the background workers (payment capture) may have appeared.
        self.workers = asyncio.Event()

    def wake_workers(self) -> None:
        self.workers.set()

    def subscribe(self, gateway_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._events[gateway_id].add(event)
        return event

    def unsubscribe(self, gateway_id: str, event: asyncio.Event) -> None:
        waiters = self._events.get(gateway_id)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._events[gateway_id]

    def wake(self, gateway_ids: Iterable[str]) -> None:
        for gateway_id in gateway_ids:
            for event in self._events.get(gateway_id, ()):
                event.set()

    def connected(self, gateway_id: str) -> bool:
        return bool(self._events.get(gateway_id))
