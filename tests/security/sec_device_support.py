"""Support for the device-signing attack tests: a real gateway (embedded amqtt broker, SQLite
store, device link) that can be stopped, restored from an older database copy and started
again; an attacker's MQTT client holding a machine's leaked password; and a sniffer on the site
LAN that records what the real firmware publishes, byte for byte.
"""

import asyncio
import contextlib
import shutil
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from amqtt.client import MQTTClient
from amqtt.mqtt.constants import QOS_1
from gw_device_double import DeviceDouble
from gw_support import creds as creds  # re-exported: the tests take it as a fixture
from gw_support import gateway_settings, load_site, make_machine
from polling import wait_for
from standalone_site import MachineCreds

from contracts import topics
from contracts.signing import read_acks, sign_device_message, up_key
from edge.app import Gateway
from edge.settings import GatewaySettings

PUBLISH = 3


def signed(
    machine: MachineCreds, seq: int, fields: dict[str, Any], mid: str | None = None
) -> bytes:
    """``fields`` signed the way ``machine``'s firmware signs them (the genuine key)."""
    key = up_key(bytes.fromhex(machine.command_key))
    return sign_device_message(key, mid or machine.id, seq, fields)


@dataclass
class Site:
    """One gateway's data directory; ``gateway`` is set while it runs."""

    data_dir: Path
    creds: dict[str, MachineCreds]
    gateway: Gateway | None = None
    settings: GatewaySettings | None = None

    @property
    def gw(self) -> Gateway:
        assert self.gateway is not None, "the gateway is not running"
        return self.gateway

    @contextlib.asynccontextmanager
    async def running(self, *, load: bool = True, **overrides: Any) -> AsyncIterator[Gateway]:
        self.settings = gateway_settings(self.data_dir, **overrides)
        async with Gateway(self.settings) as gateway:
            if load:
                await load_site(gateway, self.creds)
            self.gateway = gateway
            try:
                yield gateway
            finally:
                self.gateway = None

    @property
    def db_path(self) -> Path:
        return gateway_settings(self.data_dir).db_path

    def snapshot(self, to: Path) -> None:
        """A consistent copy of the live database (SQLite's backup API), as a backup job would
        take it."""
        source = sqlite3.connect(self.db_path)
        target = sqlite3.connect(to)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()

    def restore(self, copy: Path) -> None:
        """Put an older copy back while the gateway is stopped."""
        assert self.gateway is None
        for suffix in ("-wal", "-shm"):
            Path(str(self.db_path) + suffix).unlink(missing_ok=True)
        shutil.copyfile(copy, self.db_path)

    def refused(self, reason: str) -> float:
        value = self.gw.metrics.registry.get_sample_value(
            "gateway_device_messages_refused_total", {"reason": reason}
        )
        return value or 0.0

    async def query(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        return await self.gw.store.query(sql, params)

    async def money_rows(self) -> dict[str, list[dict[str, Any]]]:
        """Everything a forged money event could have changed."""
        return {
            "credits": await self.query(
                "SELECT id, amount, order_id FROM cash_credits ORDER BY id"
            ),
            "allocations": await self.query(
                "SELECT credit_id, order_id, amount FROM cash_allocations ORDER BY credit_id"
            ),
            "orders": await self.query("SELECT id, status, paid_amount FROM orders ORDER BY id"),
            "commands": await self.query(
                "SELECT cmd_id, result, reason FROM dispense_commands ORDER BY cmd_id"
            ),
            "outbox": await self.query("SELECT event_id, type FROM outbox ORDER BY seq"),
            "stock": await self.query("SELECT id, quantity, reserved FROM catalog ORDER BY id"),
        }

    async def cash_order(self, amount_items: int = 1, machine_id: str = "M1") -> str:
        body = {
            "machine_id": machine_id,
            "items": [{"id": f"{machine_id}-A1", "quantity": amount_items}],
            "payment_method": "cash",
        }
        async with (
            aiohttp.ClientSession(base_url=self.gw.http_url) as http,
            http.post("/api/v1/orders", json=body) as response,
        ):
            assert response.status == 201, await response.text()
            return str((await response.json())["data"]["id"])

    async def order_status(self, order_id: str) -> str:
        return (await self.gw.store.get_order(order_id)).status.value


@dataclass
class Attacker:
    """An MQTT client logged in with a machine's real (leaked) credentials: the broker lets it
    publish anything under that machine's topics. It watches the machine's acks too."""

    client: MQTTClient
    machine_id: str
    acks: list[str] = field(default_factory=list)

    async def publish(self, suffix: str, payload: bytes) -> None:
        await self.client.publish(topics.topic(self.machine_id, suffix), payload, qos=QOS_1)

    async def collect(self) -> None:
        while True:
            message = await self.client.deliver_message()
            if message is None:
                return
            # An observer: it reads what the gateway acked without holding the key to check it.
            self.acks.extend(read_acks(bytes(message.data or b"")).ids)

    async def acked(self, event_id: str) -> None:
        async def seen() -> bool:
            return event_id in self.acks

        await wait_for(seen)


@contextlib.asynccontextmanager
async def attacker(port: int, machine: MachineCreds) -> AsyncIterator[Attacker]:
    client = MQTTClient(client_id=machine.id, config={"auto_reconnect": False})
    await client.connect(f"mqtt://{machine.id}:{machine.secret}@127.0.0.1:{port}")
    await client.subscribe([(topics.topic(machine.id, topics.ACKS), QOS_1)])
    evil = Attacker(client, machine.id)
    task = asyncio.create_task(evil.collect())
    try:
        yield evil
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        with contextlib.suppress(Exception):
            await client.disconnect()


# --- a sniffer on the site LAN -----------------------------------------------------------------


def _publishes(buffer: bytearray) -> list[tuple[str, bytes]]:
    """Take the complete MQTT packets off the front of ``buffer``; -> its PUBLISHes."""
    found: list[tuple[str, bytes]] = []
    while len(buffer) >= 2:
        length, shift, index = 0, 0, 1
        while True:
            if index >= len(buffer):
                return found
            byte = buffer[index]
            length |= (byte & 0x7F) << shift
            shift += 7
            index += 1
            if not byte & 0x80:
                break
        if len(buffer) < index + length:
            return found
        kind, flags = buffer[0] >> 4, buffer[0] & 0x0F
        body = bytes(buffer[index : index + length])
        del buffer[: index + length]
        if kind == PUBLISH:
            topic_len = int.from_bytes(body[:2], "big")
            topic = body[2 : 2 + topic_len].decode()
            start = 2 + topic_len + (2 if (flags >> 1) & 3 else 0)
            found.append((topic, body[start:]))
    return found


@dataclass
class Sniffer:
    """A TCP relay between the firmware and the broker that records every PUBLISH the device
    sends: what anyone on the site LAN sees of plain MQTT. ``upstream`` may change (a gateway
    restarted on a new port); new connections go there."""

    upstream: int
    port: int = 0
    captured: list[tuple[str, bytes]] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def __aenter__(self) -> "Sniffer":
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.close()
            return
        for coro in (self._pipe(reader, up_writer, True), self._pipe(up_reader, writer, False)):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bool
    ) -> None:
        buffer = bytearray()
        try:
            while data := await reader.read(4096):
                if record:
                    buffer += data
                    self.captured.extend(_publishes(buffer))
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def cut(self) -> None:
        """Drop every relayed connection (the device reconnects through a new one)."""
        for task in list(self._tasks):
            task.cancel()

    def published(self, machine_id: str, suffix: str) -> list[bytes]:
        name = topics.topic(machine_id, suffix)
        return [payload for topic, payload in self.captured if topic == name]


__all__ = [
    "Attacker", "DeviceDouble", "Site", "Sniffer", "attacker", "creds", "make_machine", "signed",
    "wait_for",
]  # fmt: skip
