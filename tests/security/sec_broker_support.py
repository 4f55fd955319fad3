"""Support for the broker attack tests: a site on either broker, a raw MQTT 3.1.1 client (the
attacks are byte sequences a library client would not send), the real firmware as victim, and
the gateway-side view of what reached it.

A site runs the real gateway (SQLite, device link) on the embedded amqtt broker
(``HardenedBroker``) or on a private Mosquitto configured from ``edge.broker.mosquitto``, the
way ``tests/edge`` runs them.
"""

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp
import gw_support
from brokers import gateway_mosquitto
from gw_support import creds as creds  # re-exported: the tests take it as a fixture
from gw_support import gateway_settings, load_site, order_status
from polling import wait_for
from standalone_site import MachineCreds

from contracts.sync import PaymentUpdate
from edge.app import Gateway
from edge.sync.ports import PaymentsPort
from tools.virtual_esp32 import VirtualDevice

BrokerKind = Literal["amqtt", "mosquitto"]
BROKERS: tuple[BrokerKind, ...] = ("amqtt", "mosquitto")

CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP = 2, 3, 4, 8, 9, 12, 13
ACCEPTED, NOT_AUTHORIZED = 0, 5


# --- a site on either broker -------------------------------------------------------------------


@dataclass
class Site:
    kind: BrokerKind
    gateway: Gateway
    creds: dict[str, MachineCreds]
    _markers: int = 0

    @property
    def port(self) -> int:
        return self.gateway.mqtt_port

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.gateway.metrics.registry.get_sample_value(name, labels or {})
        return value or 0.0

    def gateway_traffic(self) -> float:
        """Every device message the gateway's link took off the broker, applied or dropped: a
        will or a forged event that reached the gateway moves this, whatever became of it."""
        total = 0.0
        for family in self.gateway.metrics.registry.collect():
            if family.name in (
                "gateway_mqtt_messages",
                "gateway_mqtt_rejected",
                "gateway_device_messages_refused",  # signed messages refused (device-signing)
            ):
                total += sum(s.value for s in family.samples if s.name.endswith("_total"))
        return total

    async def cash_credits(self) -> list[dict[str, Any]]:
        return await self.gateway.store.query("SELECT * FROM cash_credits")

    async def presence_round_trip(self, machine_id: str = "M2") -> None:
        """A legitimate presence from ``machine_id`` reaches the gateway and is applied. The
        broker keeps the order of what one connection publishes, and the gateway applies its
        messages in order, so whatever an attack made the broker publish earlier was handled
        before this returns."""
        self._markers += 1
        marker = f"marker-{self._markers}"
        secret = self.creds[machine_id].secret
        async with raw_session(self.port, machine_id, machine_id, secret, clean=True) as conn:
            assert await conn.connack() == ACCEPTED
            body = f'{{"online":true,"fw":"{marker}"}}'.encode()
            await conn.publish(f"devices/{machine_id}/status/presence", body)

            async def applied() -> bool:
                sql = "SELECT fw FROM machines WHERE id = ?"
                rows = await self.gateway.store.query(sql, [machine_id])
                return bool(rows) and rows[0]["fw"] == marker

            await wait_for(applied, within=10)


@contextlib.asynccontextmanager
async def running_site(
    kind: BrokerKind,
    tmp_path: Path,
    creds: dict[str, MachineCreds],
    payments: PaymentsPort | None = None,
) -> AsyncIterator[Site]:
    async with contextlib.AsyncExitStack() as stack:
        overrides: dict[str, Any] = {}
        if kind == "mosquitto":
            devices = {c.id: c.secret for c in creds.values()}
            broker = await stack.enter_async_context(
                gateway_mosquitto(tmp_path / "mosquitto", devices)
            )
            overrides = {
                "external_broker_url": broker.url,
                "gateway_mqtt_password": broker.gateway_password,
            }
        gateway = await stack.enter_async_context(
            Gateway(gateway_settings(tmp_path / "gw", **overrides), payments=payments)
        )
        await load_site(gateway, creds)
        yield Site(kind, gateway, creds)


# --- raw MQTT 3.1.1 ----------------------------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(data)) + data


def packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([(kind << 4) | flags]) + varint(len(body)) + body


@dataclass(frozen=True)
class Will:
    topic: str
    message: bytes
    qos: int = 1
    retain: bool = False


def connect_packet(
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    *,
    clean: bool = False,
    will: Will | None = None,
    keepalive: int = 60,
) -> bytes:
    flags = 0x02 if clean else 0
    payload = mqtt_string(client_id)
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        payload += mqtt_string(will.topic) + mqtt_string(will.message)
    if username is not None:
        flags |= 0x80
        payload += mqtt_string(username)
    if password is not None:
        flags |= 0x40
        payload += mqtt_string(password)
    head = mqtt_string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
    return packet(1, 0, head + payload)


def publish_packet(topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> bytes:
    body = mqtt_string(topic) + (struct.pack("!H", 1) if qos else b"") + payload
    return packet(PUBLISH, (qos << 1) | (1 if retain else 0), body)


class RawConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._pid = 0

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_packet(self, within: float = 5.0) -> tuple[int, int, bytes] | None:
        """(type, flags, body), or None when the broker closed the connection."""
        try:
            async with asyncio.timeout(within):
                first = await self.reader.readexactly(1)
                length, shift = 0, 0
                while True:
                    byte = (await self.reader.readexactly(1))[0]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                body = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return first[0] >> 4, first[0] & 0x0F, body

    async def connack(self) -> int | None:
        """The CONNACK return code, or None if the broker closed without one."""
        got = await self.read_packet()
        if got is None:
            return None
        kind, _, body = got
        assert kind == CONNACK, got
        return body[1]

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """QoS 1, waiting for the PUBACK (a broker that drops a refused publish still acks)."""
        await self.send(publish_packet(topic, payload, qos=1, retain=retain))
        await self.expect(PUBACK)

    async def subscribe(self, topic_filter: str, qos: int = 1) -> int:
        self._pid += 1
        body = struct.pack("!H", self._pid) + mqtt_string(topic_filter) + bytes([qos])
        await self.send(packet(SUBSCRIBE, 2, body))
        return (await self.expect(SUBACK))[-1]

    async def expect(self, kind: int, within: float = 5.0) -> bytes:
        async with asyncio.timeout(within):
            while True:
                got = await self.read_packet(within)
                assert got is not None, f"connection closed while waiting for packet {kind}"
                if got[0] == kind:
                    return got[2]

    async def alive(self) -> bool:
        """PINGREQ answered: the broker still serves this very connection."""
        try:
            await self.send(packet(PINGREQ, 0, b""))
        except ConnectionError:
            return False
        while True:
            got = await self.read_packet(3.0)
            if got is None:
                return False
            if got[0] == PINGRESP:
                return True

    async def collect(self, within: float) -> list[tuple[int, int, bytes]]:
        """Every packet until ``within`` seconds pass without one, or the connection closes."""
        got = []
        try:
            while (item := await self.read_packet(within)) is not None:
                got.append(item)
        except TimeoutError:
            pass
        return got

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def raw_connection(port: int) -> AsyncIterator[RawConnection]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = RawConnection(reader, writer)
    try:
        yield conn
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def raw_session(
    port: int,
    client_id: str,
    username: str | None,
    password: str | None,
    *,
    clean: bool = False,
    will: Will | None = None,
) -> AsyncIterator[RawConnection]:
    """A connection that has sent its CONNECT; the caller reads the CONNACK."""
    async with raw_connection(port) as conn:
        await conn.send(connect_packet(client_id, username, password, clean=clean, will=will))
        yield conn


# --- the attacks -------------------------------------------------------------------------------

FORGED_CASH = b'{"id":"willforged01","amount":100000,"currency":"INR","ts":1}'
Variant = Literal["no_username", "wrong_password", "other_machine"]
VARIANTS: tuple[Variant, ...] = ("no_username", "wrong_password", "other_machine")


def attack_connect(creds: dict[str, MachineCreds], variant: Variant, retain: bool) -> bytes:
    """A CONNECT that must be refused, carrying M1's client id, clean_session=0 and a will that
    would be a cash credit for M1."""
    will = Will("devices/M1/events/cash", FORGED_CASH, qos=1, retain=retain)
    if variant == "no_username":
        return connect_packet("M1", will=will)
    if variant == "wrong_password":
        return connect_packet("M1", "M1", "not-the-secret", will=will)
    return connect_packet("M1", "M2", creds["M2"].secret, will=will)


async def refused_connect(port: int, data: bytes) -> int | None:
    """Send one attack CONNECT, read the answer and close abruptly (no DISCONNECT)."""
    async with raw_connection(port) as conn:
        await conn.send(data)
        return await conn.connack()


@contextlib.asynccontextmanager
async def raw_victim(site: Site) -> AsyncIterator[RawConnection]:
    """M1 connected the way its firmware connects: clean_session=0, retained offline will."""
    will = Will("devices/M1/status/presence", b'{"online":false}', qos=1, retain=True)
    secret = site.creds["M1"].secret
    async with raw_session(site.port, "M1", "M1", secret, clean=False, will=will) as conn:
        assert await conn.connack() == ACCEPTED
        assert await conn.subscribe("devices/M1/commands/dispense") == 1
        await conn.publish("devices/M1/status/presence", b'{"online":true}', retain=True)

        async def online() -> bool:
            return any(m.id == "M1" and m.online for m in await site.gateway.store.list_machines())

        await wait_for(online, within=10)
        yield conn


# --- the real firmware -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def firmware_m1(site: Site, flash: Path) -> AsyncIterator[VirtualDevice]:
    async with gw_support.firmware_m1(flash, site.port, site.creds["M1"], within=30) as dev:
        yield dev


def link_ups(device: VirtualDevice) -> int:
    """How many times the firmware connected to the broker, over every boot."""
    return sum(1 for line in device.output_lines if line == "LINK up")


async def create_order(site: Site, payment_method: str, quantity: int = 1) -> dict[str, Any]:
    body = {
        "machine_id": "M1",
        "items": [{"id": "M1-A1", "quantity": quantity}],
        "payment_method": payment_method,
    }
    async with (
        aiohttp.ClientSession(base_url=site.gateway.http_url) as http,
        http.post("/api/v1/orders", json=body) as response,
    ):
        assert response.status == 201, await response.text()
        return dict((await response.json())["data"])


async def finished(site: Site, order_id: str, within: float = 40) -> str:
    async def terminal() -> str | None:
        status = await order_status(site.gateway, order_id)
        return status if status in {"completed", "refund_pending", "failed"} else None

    return str(await wait_for(terminal, within=within))


async def capture(site: Site, order: dict[str, Any], amount: int) -> None:
    """The provider's capture, as the cloud's push channel would deliver it."""
    update = PaymentUpdate(
        payment_id=order["payment"]["payment_id"],
        order_id=order["id"],
        machine_id="M1",
        status="captured",
        amount=amount,
        currency="INR",
        provider="sandbox",
    )
    await site.gateway.store.apply_payment_update("chan-1", update)


@contextlib.asynccontextmanager
async def refused_connect_storm(
    site: Site, creds: dict[str, MachineCreds], interval: float = 0.3
) -> AsyncIterator[list[int | None]]:
    """Refused CONNECTs with M1's client id (every variant in turn) until the block ends;
    yields the CONNACK codes received so far."""
    answers: list[int | None] = []

    async def storm() -> None:
        attacks = [attack_connect(creds, v, r) for v in VARIANTS for r in (False, True)]
        n = 0
        while True:
            answers.append(await refused_connect(site.port, attacks[n % len(attacks)]))
            n += 1
            await asyncio.sleep(interval)  # the attacker's pace, not a wait for a condition

    task = asyncio.create_task(storm())
    try:
        yield answers
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
