"""A reader for amqtt that frames MQTT packets itself and refuses oversized ones unread.

amqtt reads a packet's remaining length and then buffers whatever that length says (up to
256 MiB) before anyone can look at it. This adapter reads each packet's fixed header first,
compares the remaining length with the connection's limit and, when it is over, aborts the TCP
connection at once: the body is never read into memory. Under the limit it reads the whole
packet and hands its bytes to amqtt's parser exactly as the socket would have.

It also closes a connection at the fixed header of a QoS 2 PUBLISH: nothing in our protocol
uses QoS 2, and amqtt 0.12.1 keeps every unreleased one (and a task waiting for its PUBREL,
with no timeout) in memory, past the end of the connection.
"""

import asyncio
import logging
from collections.abc import Callable

from amqtt.adapters import ReaderAdapter

log = logging.getLogger(__name__)

# A remaining length is at most four bytes of seven bits each (MQTT 3.1.1, 2.2.3).
_MAX_LENGTH_BYTES = 4
_PUBLISH = 3
_QOS_BITS = 0x06
_QOS_1 = 0x02


class PacketLimitReader(ReaderAdapter):
    """``limit`` bounds the size of every packet (fixed header included); it may be raised once
    the client is known (the gateway's own client sends larger packets than a device may)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        limit: int,
        on_oversize: Callable[[int], None],
        on_qos2: Callable[[], None] = lambda: None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.limit = limit
        self._on_oversize = on_oversize
        self._on_qos2 = on_qos2
        self._ready = bytearray()  # whole packets read off the socket, not yet taken by amqtt
        # A fixed header half read survives a cancelled read (amqtt wraps header reads in a
        # keep-alive timeout), so the framing never slips.
        self._header = bytearray()
        self._refused = False

    @property
    def refused(self) -> bool:
        return self._refused

    async def read(self, n: int = -1) -> bytes:
        if n < 0:
            if not self._ready:
                await self._next_packet(n)
            return self._take(len(self._ready))
        while len(self._ready) < n:
            await self._next_packet(n)
        return self._take(n)

    def feed_eof(self) -> None:
        self._reader.feed_eof()

    def _take(self, n: int) -> bytes:
        data = bytes(self._ready[:n])
        del self._ready[:n]
        return data

    async def _next_packet(self, wanted: int) -> None:
        if self._refused:
            raise asyncio.IncompleteReadError(b"", wanted)
        while True:
            self._header += await self._reader.readexactly(1)
            if len(self._header) >= 2 and not self._header[-1] & 0x80:
                break
            if len(self._header) > _MAX_LENGTH_BYTES:
                self._refuse(None)
                raise asyncio.IncompleteReadError(b"", wanted)
        if self._header[0] >> 4 == _PUBLISH and self._header[0] & _QOS_BITS > _QOS_1:
            self._refused = True
            log.warning("closed MQTT connection from %s: QoS 2 publish",
                        self._writer.get_extra_info("peername"))  # fmt: skip
            self._on_qos2()
            self._writer.transport.abort()
            raise asyncio.IncompleteReadError(b"", wanted)
        remaining = 0
        for shift, byte in enumerate(self._header[1:]):
            remaining |= (byte & 0x7F) << (7 * shift)
        if len(self._header) + remaining > self.limit:
            self._refuse(len(self._header) + remaining)
            raise asyncio.IncompleteReadError(b"", wanted)
        body = await self._reader.readexactly(remaining) if remaining else b""
        self._ready += self._header
        self._ready += body
        self._header.clear()

    def _refuse(self, size: int | None) -> None:
        self._refused = True
        peer = self._writer.get_extra_info("peername")
        if size is None:
            log.warning("closed MQTT connection from %s: malformed remaining length", peer)
        else:
            log.warning(
                "closed MQTT connection from %s: packet of %d bytes over the %d-byte limit",
                peer,
                size,
                self.limit,
            )
            self._on_oversize(size)
        # abort, not close: nothing more is read, and queued output is dropped too.
        self._writer.transport.abort()
