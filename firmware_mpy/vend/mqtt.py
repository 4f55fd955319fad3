# MQTT 3.1.1 client on asyncio streams. It runs unchanged on the ESP32 and the unix port
# (umqtt blocks; mqtt_as imports `network` at load). QoS 0 and 1 only.
#
# The client knows nothing about reconnecting: the device's supervisor owns one client per
# connection attempt and throws it away when anything fails.
import asyncio
import struct
from time import ticks_diff, ticks_ms

from micropython import const

_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBSCRIBE = const(0x82)
_SUBACK = const(0x90)
_PINGRESP = const(0xD0)
_PINGREQ = const(b"\xc0\x00")
_DISCONNECT = const(b"\xe0\x00")
_MAX_LENGTH = const(268435455)  # largest value four remaining-length bytes can carry


class MQTTError(Exception):
    pass


def encode_length(n):
    if n < 0 or n > _MAX_LENGTH:
        raise MQTTError("length out of range")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def decode_length(data, pos=0):
    """Remaining length starting at data[pos] -> (value, position after it)."""
    value = 0
    shift = 0
    for i in range(4):
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    raise MQTTError("remaining length longer than 4 bytes")


def _utf8(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def packet(first_byte, body):
    return bytes((first_byte,)) + encode_length(len(body)) + body


def connect_packet(client_id, user, password, keepalive, clean=False, will=None):
    """will: (topic, message, qos, retain) or None."""
    flags = 0x02 if clean else 0
    payload = _utf8(client_id)
    if will:
        topic, msg, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += _utf8(topic) + _utf8(msg)
    if user is not None:
        flags |= 0x80
        payload += _utf8(user)
        if password is not None:
            flags |= 0x40
            payload += _utf8(password)
    head = b"\x00\x04MQTT\x04" + bytes((flags,)) + struct.pack("!H", keepalive)
    return packet(_CONNECT, head + payload)


def publish_header(topic, msg_len, qos=0, retain=False, pid=0, dup=False):
    """Everything of a PUBLISH before the message: sent separately, so a message is never
    copied into a packet (the heap holds it once, docs/firmware.md "Heap")."""
    first = _PUBLISH | (qos << 1) | (1 if retain else 0) | (0x08 if dup else 0)
    body = _utf8(topic)
    if qos:
        body += struct.pack("!H", pid)
    return bytes((first,)) + encode_length(len(body) + msg_len) + body


def publish_packet(topic, msg, qos=0, retain=False, pid=0, dup=False):
    return publish_header(topic, len(msg), qos, retain, pid, dup) + msg


def subscribe_packet(pid, topics):
    body = struct.pack("!H", pid)
    for topic, qos in topics:
        body += _utf8(topic) + bytes((qos,))
    return packet(_SUBSCRIBE, body)


def puback_packet(pid):
    return b"\x40\x02" + struct.pack("!H", pid)


def parse_publish(first, body):
    """-> (topic, message, qos, pid)."""
    qos = (first >> 1) & 3
    n = struct.unpack_from("!H", body, 0)[0]
    topic = bytes(body[2 : 2 + n]).decode()
    pos = 2 + n
    pid = 0
    if qos:
        pid = struct.unpack_from("!H", body, pos)[0]
        pos += 2
    return topic, bytes(body[pos:]), qos, pid


class MQTTClient:
    """on_message(topic, msg) is called for each PUBLISH; (None, None) for one dropped because
    it was larger than max_packet."""

    def __init__(self, client_id, user, password, keepalive_s, will, on_message, max_packet):
        self._client_id = client_id
        self._user = user
        self._password = password
        self._keepalive = keepalive_s
        self._will = will
        self._on_message = on_message
        self._max_packet = max_packet
        self._reader = None
        self._writer = None
        self._pid = 0
        self._waiting = {}  # packet id -> [Event, payload of the ack]
        self._lock = asyncio.Lock()
        self._skip = bytearray(256)  # reused to discard oversized packets
        self._last_rx = ticks_ms()
        self.oversize = 0  # incoming packets dropped for exceeding max_packet

    def _next_pid(self):
        self._pid = self._pid % 65535 + 1
        return self._pid

    async def _send(self, data, more=None):
        if self._writer is None:
            raise MQTTError("not connected")
        async with self._lock:
            self._writer.write(data)
            if more:
                self._writer.write(more)
            await self._writer.drain()

    async def _read_packet(self):
        r = self._reader
        if r is None:
            raise MQTTError("not connected")
        first = (await r.readexactly(1))[0]
        n = 0
        shift = 0
        while True:
            byte = (await r.readexactly(1))[0]
            n |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 21:
                raise MQTTError("remaining length longer than 4 bytes")
        self._last_rx = ticks_ms()
        if n > self._max_packet:
            # Too big for this device: read it away in small pieces and forget it, but still
            # PUBACK it, or the broker would deliver it again at every reconnect.
            self.oversize += 1
            pid = 0
            if first & 0xF0 == _PUBLISH and n >= 2:
                topic_len = struct.unpack("!H", await r.readexactly(2))[0]
                n -= 2
                skip = min(topic_len, n)
                await self._discard(skip)
                n -= skip
                if (first >> 1) & 3 and n >= 2:
                    pid = struct.unpack("!H", await r.readexactly(2))[0]
                    n -= 2
            await self._discard(n)
            if pid:
                await self._send(puback_packet(pid))
            if first & 0xF0 == _PUBLISH:
                self._on_message(None, None)
            return first, None
        body = await r.readexactly(n) if n else b""
        return first, body

    async def _discard(self, n):
        buf = self._skip
        r = self._reader
        if r is None:
            raise MQTTError("not connected")
        while n:
            got = await r.readinto(memoryview(buf)[: min(n, len(buf))])
            if not got:
                raise EOFError
            n -= got

    async def connect(self, host, port, timeout_ms):
        """Open the connection and complete CONNECT/CONNACK; -> session_present."""
        self._reader, self._writer = await asyncio.wait_for_ms(
            asyncio.open_connection(host, port), timeout_ms
        )
        try:
            # Nagle off: a small packet sent behind another unacked one waited for the broker's
            # delayed ACK (~40 ms). IPPROTO_TCP 6, TCP_NODELAY 1 on Linux and lwIP alike.
            self._writer.s.setsockopt(6, 1, 1)
        except (AttributeError, OSError):
            pass  # a port without the option keeps Nagle: slower, still correct
        await self._send(
            connect_packet(
                self._client_id, self._user, self._password, self._keepalive, False, self._will
            )
        )
        first, body = await asyncio.wait_for_ms(self._read_packet(), timeout_ms)
        if first != _CONNACK or body is None or len(body) != 2:
            raise MQTTError("expected CONNACK")
        if body[1]:
            raise MQTTError("connection refused, code %d" % body[1])
        return bool(body[0] & 1)

    async def run(self):
        """Read packets until the connection fails (raises)."""
        while True:
            first, body = await self._read_packet()
            kind = first & 0xF0
            if body is None:
                continue
            if kind == _PUBLISH:
                topic, msg, qos, pid = parse_publish(first, body)
                if qos == 2:
                    raise MQTTError("QoS 2 is not supported")
                self._on_message(topic, msg)
                if qos == 1:
                    await self._send(puback_packet(pid))
            elif kind == _PUBACK or kind == _SUBACK:
                pid = struct.unpack_from("!H", body, 0)[0]
                slot = self._waiting.get(pid)
                if slot is not None:
                    slot[1] = body[2:]
                    slot[0].set()

    async def keepalive(self):
        """PINGREQ at half the keepalive; raises when the broker has gone quiet."""
        period = self._keepalive * 1000
        while True:
            await asyncio.sleep_ms(period // 2)
            if ticks_diff(ticks_ms(), self._last_rx) > period * 3 // 2:
                raise MQTTError("keepalive timeout")
            await self._send(_PINGREQ)

    async def _await_ack(self, data_for, timeout_ms, retries):
        pid = self._next_pid()
        arrived = asyncio.Event()
        slot = [arrived, None]
        self._waiting[pid] = slot
        try:
            for attempt in range(retries + 1):
                await self._send(*data_for(pid, attempt > 0))
                try:
                    await asyncio.wait_for_ms(arrived.wait(), timeout_ms)
                    return slot[1]
                except asyncio.TimeoutError:
                    pass
            raise MQTTError("no acknowledgement for packet %d" % pid)
        finally:
            self._waiting.pop(pid, None)

    async def publish(self, topic, msg, qos=0, retain=False, timeout_ms=5000, retries=2):
        if isinstance(msg, str):
            msg = msg.encode()
        if not qos:
            await self._send(publish_header(topic, len(msg), 0, retain), msg)
            return
        await self._await_ack(
            lambda pid, dup: (publish_header(topic, len(msg), 1, retain, pid, dup), msg),
            timeout_ms,
            retries,
        )

    async def subscribe(self, topics, timeout_ms=5000):
        """-> the granted QoS per topic filter, 0x80 where the broker refused it."""
        granted = await self._await_ack(
            lambda pid, _dup: (subscribe_packet(pid, topics),), timeout_ms, 0
        )
        if len(granted) != len(topics):
            raise MQTTError("SUBACK does not match SUBSCRIBE")
        return list(granted)

    async def close(self, graceful=False):
        w = self._writer
        self._writer = None
        if w is None:
            return
        try:
            if graceful:
                w.write(_DISCONNECT)
                await asyncio.wait_for_ms(w.drain(), 1000)
            w.close()
            await asyncio.wait_for_ms(w.wait_closed(), 1000)
        except (OSError, asyncio.TimeoutError):
            pass
