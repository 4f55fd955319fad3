"""The gateway's SQLite store: one writer thread, one reader thread, the outbox."""

from edge.store.store import GatewayStore

__all__ = ["GatewayStore"]
