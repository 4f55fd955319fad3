"""Brokers for tests that need a plain MQTT broker rather than the gateway's own."""

import contextlib
from collections.abc import AsyncIterator

from amqtt.broker import Broker


@contextlib.asynccontextmanager
async def anonymous_amqtt() -> AsyncIterator[int]:
    """An amqtt broker on an ephemeral loopback port that lets anyone in; yields the port."""
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }
    )
    await broker.start()
    try:
        server = broker._servers["default"].instance
        assert server is not None
        yield server.sockets[0].getsockname()[1]
    finally:
        await broker.shutdown()
