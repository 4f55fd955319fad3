"""Devices per gateway: a swarm of simulated devices against one standalone gateway.

``python -m tools.bench.device_swarm [--devices 1000] [--interval 10] [--hold 20] [--quick]``

Each simulated device is a few hundred bytes of asyncio state speaking MQTT 3.1.1 over a raw
socket, as the firmware does (``firmware_mpy/vend/app.py``): CONNECT with its own machine id and
password (clean_session=0, keep-alive 30 s, will = retained offline presence), retained online
presence (QoS 1), SUBSCRIBE to its ``commands/#``, ``acks`` and ``config/#`` (QoS 1), then
health (QoS 0) every ``--interval`` seconds at a random phase, PINGREQ at half the keep-alive,
and on any loss the firmware's reconnect: capped exponential backoff 0.5 s .. 30 s with jitter.
Each device connects from its own loopback address (127.1.x.y), as devices on a LAN do, so the
broker's per-address PBKDF2 cap sees one device per address.

The gateway runs in a child process (one core for it, one for the swarm) with N machines whose
MQTT secrets are hashed as the cloud hashes them (PBKDF2-SHA256, 100,000 iterations; ``--quick``
uses 1,000). The child measures its own event-loop lag (a 10 ms ticker), RSS and CPU, and counts
health delivered to the gateway's device link. Phases: all devices connect at once; they hold
for ``--hold`` seconds; the gateway is restarted (graceful stop, same port) and all devices
reconnect at once (the storm).

Floor, same run: the same swarm against Mosquitto (the system binary, anonymous listener on an
ephemeral loopback port, started here) with one subscriber on ``devices/+/status/#`` counting
health, restarted the same way for its storm.
"""

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tools.virtual_esp32 import VirtualDevice

KEEPALIVE_S = 30
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
CONNECT_TIMEOUT_S = 10.0
FW = "swarm-1"
PRICE = 1000
FIRMWARE_ID = "FWVEND"


# --- a minimal MQTT 3.1.1 client ------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _varint(len(body)) + body


def connect_packet(
    client_id: str,
    user: str | None,
    password: str | None,
    will: tuple[str, bytes, int, bool] | None,
    clean: bool = False,
) -> bytes:
    flags = 0x02 if clean else 0
    payload = _str(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += _str(topic) + _str(message)
    if user is not None:
        flags |= 0x80
        payload += _str(user)
    if password is not None:
        flags |= 0x40
        payload += _str(password)
    head = b"\x00\x04MQTT\x04" + bytes((flags,)) + struct.pack("!H", KEEPALIVE_S)
    return _packet(0x10, head + payload)


def subscribe_packet(pid: int, filters: list[str], qos: int = 1) -> bytes:
    body = struct.pack("!H", pid) + b"".join(_str(f) + bytes((qos,)) for f in filters)
    return _packet(0x82, body)


def publish_packet(topic: str, payload: bytes, qos: int, retain: bool, pid: int = 0) -> bytes:
    body = _str(topic) + (struct.pack("!H", pid) if qos else b"") + payload
    return _packet(0x30 | (qos << 1) | (1 if retain else 0), body)


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    return first, await reader.readexactly(length) if length else b""


# --- the swarm ----------------------------------------------------------------------------------


@dataclass
class Stats:
    connack_refused: int = 0  # CONNACK with a non-zero code
    closed_before_connack: int = 0  # connection closed or timed out before any CONNACK
    connect_errors: int = 0  # the TCP connect itself failed
    lost: int = 0  # an established connection that ended
    health_sent: int = 0
    ready_at: dict[int, float] = field(default_factory=dict)  # device -> time its SUBACK came


class Device:
    def __init__(
        self, index: int, machine_id: str, password: str | None, host: str, port: int,
        interval: float, stats: Stats,
    ) -> None:  # fmt: skip
        self.index = index
        self.mid = machine_id
        self.password = password
        self.host = host
        self.port = port
        self.interval = interval
        self.stats = stats
        self.base = f"devices/{machine_id}/"
        self.source = f"127.1.{index // 250}.{index % 250 + 1}"
        self.ready = asyncio.Event()
        self._pid = 0

    def _next_pid(self) -> int:
        self._pid = self._pid % 65535 + 1
        return self._pid

    async def run(self, stop: asyncio.Event) -> None:
        backoff = BACKOFF_MIN_S
        while not stop.is_set():
            since = time.monotonic()
            try:
                await self._session(stop)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                pass
            self.ready.clear()
            if stop.is_set():
                return
            if time.monotonic() - since > KEEPALIVE_S:
                backoff = BACKOFF_MIN_S
            delay = backoff / 2 + random.random() * backoff / 2
            backoff = min(backoff * 2, BACKOFF_MAX_S)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()

    async def _session(self, stop: asyncio.Event) -> None:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, local_addr=(self.source, 0)
                )
        except (OSError, TimeoutError):
            self.stats.connect_errors += 1
            raise
        tasks: list[asyncio.Task[object]] = []
        try:
            will = (self.base + "status/presence", b'{"online": false}', 1, True)
            user = self.mid if self.password is not None else None
            writer.write(connect_packet(self.mid, user, self.password, will))
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    kind, body = await read_packet(reader)
            except (asyncio.IncompleteReadError, TimeoutError, OSError):
                self.stats.closed_before_connack += 1
                raise
            if kind >> 4 != 2 or len(body) < 2 or body[1] != 0:
                self.stats.connack_refused += 1
                raise ConnectionError("refused")
            presence = json.dumps({"online": True, "fw": FW, "boot": 1, "ts": int(time.time())})
            writer.write(
                publish_packet(
                    self.base + "status/presence", presence.encode(), 1, True, self._next_pid()
                )
            )
            filters = [self.base + "commands/#", self.base + "acks", self.base + "config/#"]
            writer.write(subscribe_packet(self._next_pid(), filters))
            tasks.append(asyncio.create_task(self._pinger(writer)))
            tasks.append(asyncio.create_task(self._health(writer)))
            reading = asyncio.create_task(self._read(reader, writer))
            stopping = asyncio.create_task(stop.wait())
            tasks += [reading, stopping]
            await asyncio.wait([reading, stopping], return_when=asyncio.FIRST_COMPLETED)
            if reading.done() and not stop.is_set():
                self.stats.lost += 1
                reading.result()  # raises what ended it
        finally:
            for task in tasks:
                task.cancel()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            first, body = await read_packet(reader)
            kind = first >> 4
            if kind == 9:  # SUBACK
                self.stats.ready_at.setdefault(self.index, time.monotonic())
                self.ready.set()
            elif kind == 3 and (first >> 1) & 3 == 1:  # PUBLISH QoS 1 from the gateway: PUBACK
                (topic_len,) = struct.unpack_from("!H", body)
                writer.write(b"\x40\x02" + body[2 + topic_len : 4 + topic_len])
            # PUBACK (4) and PINGRESP (13) need nothing.

    async def _pinger(self, writer: asyncio.StreamWriter) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_S / 2)
            writer.write(b"\xc0\x00")

    async def _health(self, writer: asyncio.StreamWriter) -> None:
        await self.ready.wait()
        await asyncio.sleep(random.random() * self.interval)
        started = time.monotonic()
        while True:
            health = {
                "fw": FW, "uptime_s": int(time.monotonic() - started), "heap_free": 40000,
                "temp_c": 21.5, "door_open": False, "rssi": -60, "dropped": 0, "acks_refused": 0,
                "ts": int(time.time()),
            }  # fmt: skip
            writer.write(
                publish_packet(self.base + "status/health", json.dumps(health).encode(), 0, False)
            )
            self.stats.health_sent += 1
            await asyncio.sleep(self.interval)


# --- the gateway, in a child process ------------------------------------------------------------


def _rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _counter(metrics: object, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in metrics.registry.collect():  # type: ignore[attr-defined]
        for sample in family.samples:
            if sample.name == name:
                out[",".join(sample.labels.values()) or "-"] = sample.value
    return out


async def _gateway_child(data_dir: Path, port: int, machines_file: Path, seed: bool) -> None:
    from contracts.sync import CatalogItemState, MachineState, StateResponse
    from edge.app import Gateway
    from edge.settings import GatewaySettings

    settings = GatewaySettings(
        data_dir=data_dir, http_port=0, mqtt_port=port, zeroconf_enabled=False,
        engine_tick_s=0.2, kiosk_orders_per_minute_per_client=1_000_000,
    )  # fmt: skip
    lags: list[float] = []

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + 0.01
            await asyncio.sleep(0.01)
            lags.append(max(0.0, loop.time() - due))

    lines: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line.strip())
        loop.call_soon_threadsafe(lines.put_nowait, "quit")

    threading.Thread(target=read_stdin, daemon=True).start()
    async with Gateway(settings) as gateway:
        site = json.loads(await asyncio.to_thread(machines_file.read_text))
        rows, firmware = site["rows"], site.get("firmware")
        if seed:
            await gateway.store.apply_state(
                StateResponse(
                    cursor=1,
                    machines=[
                        MachineState(
                            id=mid,
                            tenant_id="bench",
                            site_id="bench",
                            name=mid,
                            status="active",
                            mqtt_secret_hash=secret_hash,
                            command_key="0" * 64,
                            catalog=[
                                CatalogItemState(
                                    id=f"{mid}-A1",
                                    slot="A1",
                                    name="Water",
                                    price=1000,
                                    currency="INR",
                                    quantity=10,
                                )
                            ],
                            version=1,
                        )
                        for mid, secret_hash in rows
                    ]
                    + (
                        [
                            MachineState(
                                id=firmware["id"],
                                tenant_id="bench",
                                site_id="bench",
                                name=firmware["id"],
                                status="active",
                                mqtt_secret_hash=firmware["hash"],
                                command_key=firmware["key"],
                                catalog=[
                                    CatalogItemState(
                                        id=f"{firmware['id']}-A1",
                                        slot="A1",
                                        name="Water",
                                        price=PRICE,
                                        currency="INR",
                                        quantity=firmware["stock"],
                                    )
                                ],
                                version=1,
                            )
                        ]
                        if firmware
                        else []
                    ),
                )
            )
        tick = asyncio.create_task(ticker())
        print(json.dumps({"ready": True, "http_url": gateway.http_url}), flush=True)
        cpu0 = time.process_time()
        while (command := await lines.get()) != "quit":
            window = sorted(lags)
            lags.clear()
            n = len(window)
            health = _counter(gateway.metrics, "gateway_mqtt_messages_total")
            reply = {
                "lag_p50_ms": 1000 * window[n // 2] if n else 0.0,
                "lag_p99_ms": 1000 * window[min(n - 1, int(n * 0.99))] if n else 0.0,
                "lag_max_ms": 1000 * window[-1] if n else 0.0,
                "rss_mb": _rss_mb(),
                "cpu_s": time.process_time() - cpu0,
                "health": health.get("status/health", 0.0),
                "presence": health.get("status/presence", 0.0),
                "refused": _counter(gateway.metrics, "gateway_mqtt_connects_refused_total"),
            }
            del command
            print(json.dumps(reply), flush=True)
        tick.cancel()


class GatewayProcess:
    def __init__(self, data_dir: Path, port: int, machines_file: Path) -> None:
        self.data_dir, self.port, self.machines_file = data_dir, port, machines_file
        self.proc: asyncio.subprocess.Process | None = None
        self.http_url = ""

    async def start(self, seed: bool) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tools.bench.device_swarm", "--gateway-child",
            str(self.data_dir), str(self.port), str(self.machines_file), "1" if seed else "0",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        line = await self._line(120)
        ready = json.loads(line)
        if not ready.get("ready"):
            raise RuntimeError(f"gateway did not start: {line!r}")
        self.http_url = str(ready["http_url"])

    async def _line(self, limit_s: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        async with asyncio.timeout(limit_s):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise RuntimeError("gateway child exited")
                if raw.startswith(b"{"):
                    return raw.decode()

    async def stats(self) -> dict[str, object]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(b"stats\n")
        return dict(json.loads(await self._line(60)))

    async def stop(self) -> None:
        if self.proc is None:
            return
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"quit\n")
        with contextlib.suppress(Exception):
            await self.proc.stdin.drain()
        try:
            async with asyncio.timeout(30):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        self.proc = None


# --- Mosquitto, the floor -----------------------------------------------------------------------


class MosquittoProcess:
    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.proc: subprocess.Popen[bytes] | None = None
        self.health = 0
        self._sub: asyncio.Task[None] | None = None
        self.cpu0 = 0.0

    async def start(self, seed: bool) -> None:
        conf = self.root / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_connections -1\nlog_dest none\n"
        )
        self.proc = subprocess.Popen(  # noqa: ASYNC220 (starts at once; nothing to await)
            ["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL
        )
        self.cpu0 = 0.0
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        self._sub = asyncio.create_task(self._subscriber())

    async def _subscriber(self) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(connect_packet("swarm-gateway", None, None, None, clean=True))
                await read_packet(reader)
                writer.write(subscribe_packet(1, ["devices/+/status/#"]))
                while True:
                    first, body = await read_packet(reader)
                    if first >> 4 == 3:
                        (topic_len,) = struct.unpack_from("!H", body)
                        if body[2 : 2 + topic_len].endswith(b"/status/health"):
                            self.health += 1
                        if (first >> 1) & 3 == 1:
                            pid = body[2 + topic_len : 4 + topic_len]
                            writer.write(b"\x40\x02" + pid)
            except (OSError, asyncio.IncompleteReadError):
                await asyncio.sleep(0.1)

    async def stats(self) -> dict[str, object]:
        assert self.proc is not None
        return {
            "lag_p50_ms": float("nan"), "lag_p99_ms": float("nan"), "lag_max_ms": float("nan"),
            "rss_mb": _rss_mb(self.proc.pid), "cpu_s": _cpu_s(self.proc.pid),
            "health": float(self.health), "presence": float("nan"), "refused": {},
        }  # fmt: skip

    async def stop(self) -> None:
        if self._sub is not None:
            self._sub.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sub
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
            self.proc = None


# --- a real firmware machine vending during the swarm ------------------------------------------


@dataclass
class Firmware:
    secret: str
    key: str
    stock: int
    flash: Path


async def _vend(http: aiohttp.ClientSession, device: VirtualDevice) -> float:
    """One cash vend on the firmware machine: order, coin, time until ``completed``."""
    from contracts.orders import TERMINAL_ORDER_STATUSES, OrderStatus

    body = {
        "machine_id": FIRMWARE_ID,
        "items": [{"id": f"{FIRMWARE_ID}-A1", "quantity": 1}],
        "payment_method": "cash",
    }
    async with http.post("/api/v1/orders", json=body) as response:
        order_id = (await response.json())["data"]["id"]
    async with http.get(f"/api/v1/orders/{order_id}/events") as stream:
        started = time.perf_counter()
        await device.sim("coin", amount=PRICE)
        async for line in stream.content:
            if not line.startswith(b"data:"):
                continue
            status = json.loads(line[len(b"data:") :])["status"]
            if status == OrderStatus.COMPLETED:
                return time.perf_counter() - started
            if status in TERMINAL_ORDER_STATUSES:
                raise RuntimeError(f"vend {order_id} ended {status}")
    raise RuntimeError(f"stream of {order_id} ended early")


async def _vends(url: str, device: VirtualDevice, count: int, out: list[float],
                 errors: list[str]) -> None:  # fmt: skip
    async with aiohttp.ClientSession(base_url=url) as http:
        for _ in range(count):
            try:
                async with asyncio.timeout(30):
                    out.append(await _vend(http, device))
            except Exception as exc:  # a figure, not a crash: count and go on
                errors.append(repr(exc))


# --- the run ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _hash(args: tuple[str, int]) -> str:
    from contracts.credentials import hash_secret

    return hash_secret(args[0], iterations=args[1])


async def _wait_all_ready(devices: list[Device], since: float, limit_s: float) -> float | None:
    deadline = since + limit_s
    while time.monotonic() < deadline:
        if all(d.ready.is_set() for d in devices):
            return time.monotonic() - since
        await asyncio.sleep(0.05)
    return None


async def run_target(
    name: str, target: "GatewayProcess | MosquittoProcess", ids: list[str],
    secrets: list[str | None], interval: float, hold: float, settle_timeout: float,
    firmware: Firmware | None = None, vends: int = 0,
) -> dict[str, object]:  # fmt: skip
    port = target.port
    stats = Stats()
    await target.start(seed=True)
    devices = [
        Device(i, mid, secret, "127.0.0.1", port, interval, stats)
        for i, (mid, secret) in enumerate(zip(ids, secrets, strict=True))
    ]
    stop = asyncio.Event()
    swarm_cpu0 = time.process_time()
    cpu_before = (await target.stats())["cpu_s"]
    started = time.monotonic()
    runners = [asyncio.create_task(d.run(stop)) for d in devices]
    first = await _wait_all_ready(devices, started, settle_timeout)
    connected = sum(d.ready.is_set() for d in devices)
    refused_first = stats.connack_refused + stats.closed_before_connack
    s_connect = await target.stats()
    device = None
    vend_s: list[float] = []
    vend_errors: list[str] = []
    vending: asyncio.Task[None] | None = None
    if firmware is not None and isinstance(target, GatewayProcess):
        VirtualDevice.install(
            firmware.flash,
            {
                "machine_id": FIRMWARE_ID, "mqtt_host": "127.0.0.1", "mqtt_port": port,
                "mqtt_password": firmware.secret, "command_key": firmware.key,
                "sim_slots": {"A1": firmware.stock}, "motor_ms": 0, "drop_timeout_ms": 500,
            },
        )  # fmt: skip
        device = VirtualDevice(firmware.flash)
        await device.start()
        await device.wait_online(timeout=60)
        vending = asyncio.create_task(_vends(target.http_url, device, vends, vend_s, vend_errors))
    # Steady state: every device sends health every interval.
    sent0 = stats.health_sent
    h0 = float(s_connect["health"])  # type: ignore[arg-type]
    cpu0 = float(s_connect["cpu_s"])  # type: ignore[arg-type]
    await asyncio.sleep(hold)
    await asyncio.sleep(min(2.0, interval))  # let what was sent arrive
    s_hold = await target.stats()
    if vending is not None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(60):
                await vending
        vending.cancel()
    sent = stats.health_sent - sent0
    delivered = float(s_hold["health"]) - h0  # type: ignore[arg-type]
    # The storm: the broker restarts, every device reconnects at once.
    before = (stats.connack_refused, stats.closed_before_connack)
    await target.stop()
    for d in devices:
        d.ready.clear()
    stats.ready_at.clear()
    stopping = (stats.connack_refused - before[0], stats.closed_before_connack - before[1])
    before = (stats.connack_refused, stats.closed_before_connack)
    await target.start(seed=False)
    storm_started = time.monotonic()
    storm = await _wait_all_ready(devices, storm_started, settle_timeout)
    storm_connected = sum(d.ready.is_set() for d in devices)
    s_storm = await target.stats()
    stop.set()
    await asyncio.gather(*runners, return_exceptions=True)
    swarm_cpu = time.process_time() - swarm_cpu0
    if device is not None:
        await device.close()
    await target.stop()
    row = {
        "name": name,
        "devices": len(ids),
        "connect_s": first,
        "connected": connected,
        "refused_first": refused_first,
        "connect_lag_p99_ms": s_connect["lag_p99_ms"],
        "connect_lag_max_ms": s_connect["lag_max_ms"],
        "connect_cpu_s": float(s_connect["cpu_s"]) - float(cpu_before),  # type: ignore[arg-type]
        "hold_lag_p99_ms": s_hold["lag_p99_ms"],
        "hold_lag_max_ms": s_hold["lag_max_ms"],
        "hold_cpu_pct": 100 * (float(s_hold["cpu_s"]) - cpu0) / (hold + min(2.0, interval)),  # type: ignore[arg-type]
        "rss_mb": s_hold["rss_mb"],
        "health_sent": sent,
        "health_delivered": delivered,
        "storm_s": storm,
        "storm_connected": storm_connected,
        "storm_refused": stats.connack_refused - before[0],
        "storm_closed": stats.closed_before_connack - before[1],
        "stopping_refused": stopping[0],
        "stopping_closed": stopping[1],
        "storm_lag_p99_ms": s_storm["lag_p99_ms"],
        "storm_lag_max_ms": s_storm["lag_max_ms"],
        "storm_rss_mb": s_storm["rss_mb"],
        "refused_by_broker": s_storm["refused"],
        "swarm_cpu_s": swarm_cpu,
        "vend_ms": sorted(1000 * v for v in vend_s),
        "vend_errors": vend_errors,
    }
    return row


def _fmt_s(value: object) -> str:
    return f"{value:.2f} s" if isinstance(value, float) else "NOT SETTLED"


def _print(row: dict[str, object]) -> None:
    n = row["devices"]
    vend_ms = row.get("vend_ms") or []
    errors = row.get("vend_errors") or []
    if vend_ms or errors:
        assert isinstance(vend_ms, list) and isinstance(errors, list)
        p50 = f"{vend_ms[len(vend_ms) // 2]:.0f} ms" if vend_ms else "-"
        worst = f"{vend_ms[-1]:.0f} ms" if vend_ms else "-"
        print(
            f"{row['name']:<10} vends on the real firmware during the hold: "
            f"{len(vend_ms)} completed, {len(errors)} failed, p50 {p50}, max {worst}"
            + (f" (first failure: {errors[0]})" if errors else "")
        )
    print(
        f"{row['name']:<10} connect: {row['connected']}/{n} ready in {_fmt_s(row['connect_s'])}, "
        f"{row['refused_first']} refused/closed before CONNACK, lag p99 "
        f"{row['connect_lag_p99_ms']:.1f} ms max {row['connect_lag_max_ms']:.1f} ms, "
        f"cpu {row['connect_cpu_s']:.1f} s"
    )
    print(
        f"{'':<10} hold:    health {row['health_delivered']:.0f}/{row['health_sent']} delivered, "
        f"lag p99 {row['hold_lag_p99_ms']:.1f} ms max {row['hold_lag_max_ms']:.1f} ms, "
        f"cpu {row['hold_cpu_pct']:.1f} %, rss {row['rss_mb']:.0f} MB"
    )
    print(
        f"{'':<10} storm:   {row['storm_connected']}/{n} ready in {_fmt_s(row['storm_s'])}, "
        f"{row['storm_refused']} CONNACK refusals, {row['storm_closed']} closed before CONNACK, "
        f"lag p99 {row['storm_lag_p99_ms']:.1f} ms max {row['storm_lag_max_ms']:.1f} ms, "
        f"rss {row['storm_rss_mb']:.0f} MB, broker refusals {row['refused_by_broker']} "
        f"(while the old one stopped: {row['stopping_refused']} refused, "
        f"{row['stopping_closed']} closed)"
    )


async def run(devices: int, interval: float, hold: float, settle: float, iterations: int,
              root: Path, floor: bool, vends: int) -> None:  # fmt: skip
    ids = [f"SW{i:05d}" for i in range(devices)]
    # One secret and one stored hash for all machines: setting up 1,000 PBKDF2 hashes would
    # take longer than the run, and the gateway still runs one full PBKDF2 check per machine
    # (its cache of verified logins is keyed by machine id, password and stored hash).
    secret = os.urandom(16).hex()
    secrets = [secret] * devices
    secret_hash = _hash((secret, iterations))
    hashes = [secret_hash] * devices
    print(f"{devices} machines, PBKDF2 {iterations} iterations; load {os.getloadavg()[0]:.2f}")
    firmware = None
    site: dict[str, object] = {"rows": list(zip(ids, hashes, strict=True))}
    if vends > 0:
        from contracts.credentials import new_command_key, new_mqtt_secret

        firmware = Firmware(new_mqtt_secret(), new_command_key(), vends + 2, root / "flash")
        site["firmware"] = {
            "id": FIRMWARE_ID, "hash": _hash((firmware.secret, iterations)),
            "key": firmware.key, "stock": firmware.stock,
        }  # fmt: skip
    machines_file = root / "machines.json"
    machines_file.write_text(json.dumps(site))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * devices + 256)), hard))
    gateway = GatewayProcess(root / "gateway", _free_port(), machines_file)
    row = await run_target(
        "gateway", gateway, ids, list(secrets), interval, hold, settle, firmware, vends
    )
    _print(row)
    if floor:
        mosq = MosquittoProcess(root, _free_port())
        base = await run_target("mosquitto", mosq, ids, [None] * devices, interval, hold, settle)
        _print(base)
        ratio = (
            f"x{row['storm_s'] / base['storm_s']:.1f}"  # type: ignore[operator]
            if isinstance(row["storm_s"], float) and isinstance(base["storm_s"], float)
            and base["storm_s"] else "n/a (not settled)"
        )  # fmt: skip
        print(
            f"ratio gateway/mosquitto at {devices} devices: storm settle {ratio}, "
            f"rss x{float(row['rss_mb']) / max(float(base['rss_mb']), 0.1):.1f}, "  # type: ignore[arg-type]
            f"health delivered {row['health_delivered']:.0f}/{row['health_sent']} vs "
            f"{base['health_delivered']:.0f}/{base['health_sent']}"
        )
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["--gateway-child"]:
        data_dir, port, machines, seed = args_list[1:5]
        logging.basicConfig(level=logging.ERROR)
        asyncio.run(_gateway_child(Path(data_dir), int(port), Path(machines), seed == "1"))
        return 0
    parser = argparse.ArgumentParser(prog="device_swarm", description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=10.0, help="health period, seconds")
    parser.add_argument("--hold", type=float, default=20.0, help="steady state, seconds")
    parser.add_argument("--settle", type=float, default=45.0, help="give up connecting after")
    parser.add_argument("--iterations", type=int, default=100_000, help="PBKDF2 of the secrets")
    parser.add_argument("--no-floor", action="store_true")
    parser.add_argument(
        "--vends",
        type=int,
        default=5,
        help="cash vends on a real-firmware machine during the hold (0: none)",
    )
    parser.add_argument("--quick", action="store_true", help="20 devices, seconds in all")
    args = parser.parse_args(args_list)
    if args.quick:
        args.devices, args.interval, args.hold, args.settle = 20, 1.0, 2.0, 30.0
        args.iterations, args.vends = 1000, 1
    if args.devices < 1 or args.devices > 60000:
        parser.error("--devices must be between 1 and 60000")
    if shutil.which("mosquitto") is None and not args.no_floor:
        parser.error("mosquitto is not installed (the floor); use --no-floor")
    logging.getLogger("amqtt").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="swarm-bench-") as tmp:
        asyncio.run(run(args.devices, args.interval, args.hold, args.settle, args.iterations,
                        Path(tmp), not args.no_floor, args.vends))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
