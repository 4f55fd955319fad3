"""Test-side parts of the firmware tests: brokers on ephemeral ports and a signing gateway."""

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from amqtt.client import MQTTClient

from contracts import topics
from contracts.signing import (
    SIGNED_DEVICE_SUFFIXES,
    DispenseCommandBody,
    down_key,
    sign_acks,
    sign_command,
    up_key,
    verify_device_message,
)
from tools.virtual_esp32 import FIRMWARE_DIR, VirtualDevice
from tools.virtual_esp32.flash import venv_tool

GATEWAY_USER = "gateway"
GATEWAY_PASSWORD = "gateway-test-secret"
MACHINE_IDS = ("VM1", "VM2")
WAIT_S = 10.0


def device_password(machine_id: str) -> str:
    return f"pw-{machine_id}"


def device_key(machine_id: str) -> bytes:
    return (machine_id.encode() * 32)[:32]


# make_device(machine_id="VM1", heapsize="96K", **config overrides) -> an installed device
DeviceFactory = Callable[..., VirtualDevice]


@dataclass(frozen=True)
class BrokerInfo:
    kind: str
    host: str
    port: int


def free_port() -> int:
    """A port nothing listens on right now (for a broker started later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(found).exists():
        pytest.fail("mosquitto is not installed (run: python tools/services.py ensure)")
    return found


@contextlib.contextmanager
def run_mosquitto(tmp: Path, port: int | None = None, *, persist: bool = False) -> Iterator[int]:
    """Mosquitto on ``port`` (default: a free one) with the test users; yields the port.
    With ``persist`` sessions survive a restart (saved in ``tmp`` at shutdown)."""
    users = {GATEWAY_USER: GATEWAY_PASSWORD} | {m: device_password(m) for m in MACHINE_IDS}
    lines = ["log_dest stderr"]
    if persist:
        lines += ["persistence true", f"persistence_location {tmp}/"]
    else:
        lines += ["persistence false"]
    if os.geteuid() == 0:
        # started as root mosquitto switches to user "mosquitto", which cannot read tmp_path
        lines.append("user root")
    passwd = shutil.which("mosquitto_passwd")
    if passwd:
        pwfile = tmp / "passwd"
        pwfile.touch(mode=0o600)
        for user, password in users.items():
            subprocess.run([passwd, "-b", str(pwfile), user, password], check=True, timeout=10)
        lines += ["allow_anonymous false", f"password_file {pwfile}"]
    else:
        lines += ["allow_anonymous true"]
    for _attempt in range(3):
        # mosquitto cannot report a kernel-chosen port, so take a free one and retry if lost.
        listen = port or free_port()
        conf = tmp / "mosquitto.conf"
        conf.write_text("\n".join([f"listener {listen} 127.0.0.1", *lines]) + "\n")
        log = (tmp / "mosquitto.log").open("w")
        proc = subprocess.Popen([_mosquitto_binary(), "-c", str(conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 5
        while proc.poll() is None and not _port_open(listen) and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is None and _port_open(listen):
            try:
                yield listen
            finally:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                log.close()
            return
        proc.kill()
        proc.wait()
        log.close()
    pytest.fail("mosquitto did not start: " + (tmp / "mosquitto.log").read_text())


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool

    @property
    def machine_id(self) -> str:
        parts = topics.split(self.topic)
        assert parts is not None
        return parts[0]

    @property
    def suffix(self) -> str:
        parts = topics.split(self.topic)
        assert parts is not None
        return parts[1]

    @property
    def body(self) -> bytes:
        """The message itself: for the signed kinds the verified body of the envelope (with
        its ``mid`` and ``seq``), for the rest the payload."""
        if self.suffix not in SIGNED_DEVICE_SUFFIXES:
            return self.payload
        header, text = verify_device_message(up_key(device_key(self.machine_id)), self.payload)
        assert header.mid == self.machine_id
        return text.encode()

    @property
    def seq(self) -> int:
        return verify_device_message(up_key(device_key(self.machine_id)), self.payload)[0].seq

    def json(self) -> dict[str, object]:
        data = json.loads(self.body)
        assert isinstance(data, dict)
        return data


@dataclass
class SigningGateway:
    """Plays the gateway: signs commands, acks events, records everything devices publish."""

    client: MQTTClient
    received: list[Received] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    _new: asyncio.Event = field(default_factory=asyncio.Event)

    async def collect(self) -> None:
        while True:
            msg = await self.client.deliver_message()
            if msg is None:
                continue
            self.received.append(Received(msg.topic, bytes(msg.data), bool(msg.retain)))
            self._new.set()

    def command(
        self,
        machine_id: str,
        *,
        slot: str = "A1",
        ctr: int | None = None,
        exp_in: int = 60,
        mid: str | None = None,
        key: bytes | None = None,
    ) -> tuple[str, bytes]:
        """A signed dispense command -> (cmd_id, exact payload bytes); ``key`` is the machine
        secret (the command is signed with the key derived from it)."""
        if ctr is None:
            ctr = self.counters.get(machine_id, 0) + 1
        self.counters[machine_id] = max(ctr, self.counters.get(machine_id, 0))
        now = int(time.time())
        body = DispenseCommandBody(
            cmd_id=uuid.uuid4().hex,
            mid=mid or machine_id,
            order_id=f"order-{ctr}",
            item_id=f"item-{ctr}",
            slot=slot,
            ctr=ctr,
            exp=now + exp_in,
            ts=now,
        )
        return body.cmd_id, sign_command(down_key(key or device_key(machine_id)), body)

    async def send(self, machine_id: str, payload: bytes) -> None:
        await self.client.publish(topics.topic(machine_id, topics.DISPENSE_COMMAND), payload, qos=1)

    def signed_ack(
        self, machine_id: str, ids: list[str], *, mid: str | None = None, key: bytes | None = None
    ) -> bytes:
        """An ack as the gateway signs it (``key`` is the machine secret; the ack is signed with
        the key derived from it for the gateway -> device direction)."""
        secret = key or device_key(machine_id)
        return sign_acks(down_key(secret), mid or machine_id, ids, int(time.time()))

    async def ack(self, machine_id: str, ids: list[str]) -> None:
        await self.publish_ack(machine_id, self.signed_ack(machine_id, ids))

    async def publish_ack(self, machine_id: str, payload: bytes) -> None:
        """Publish ``payload`` as it is on the machine's acks topic (forged ones too)."""
        await self.client.publish(topics.topic(machine_id, topics.ACKS), payload, qos=1)

    def messages(self, machine_id: str, suffix: str, start: int = 0) -> list[Received]:
        return [
            m for m in self.received[start:] if m.machine_id == machine_id and m.suffix == suffix
        ]

    def events(self, machine_id: str, suffix: str, event_id: str, start: int = 0) -> list[Received]:
        return [
            m for m in self.messages(machine_id, suffix, start) if m.json().get("id") == event_id
        ]

    async def wait_for(
        self, predicate: Callable[[Received], bool], *, start: int = 0, within: float = WAIT_S
    ) -> Received:
        index = start
        async with asyncio.timeout(within):
            while True:
                self._new.clear()
                while index < len(self.received):
                    if predicate(self.received[index]):
                        return self.received[index]
                    index += 1
                await self._new.wait()

    async def wait_message(
        self,
        machine_id: str,
        suffix: str,
        *,
        start: int = 0,
        within: float = WAIT_S,
        **match: object,
    ) -> Received:
        def wanted(m: Received) -> bool:
            if m.machine_id != machine_id or m.suffix != suffix:
                return False
            data = m.json()
            return all(data.get(k) == v for k, v in match.items())

        return await self.wait_for(wanted, start=start, within=within)

    async def wait_log(
        self, machine_id: str, text: str, *, start: int = 0, within: float = WAIT_S
    ) -> Received:
        def wanted(m: Received) -> bool:
            return (
                m.machine_id == machine_id
                and m.suffix == topics.LOGS
                and text in str(m.json().get("msg"))
            )

        return await self.wait_for(wanted, start=start, within=within)


def broker_uri(broker: BrokerInfo) -> str:
    auth = f"{GATEWAY_USER}:{GATEWAY_PASSWORD}@" if broker.kind == "mosquitto" else ""
    return f"mqtt://{auth}{broker.host}:{broker.port}/"


async def fetch_retained(broker: BrokerInfo, topic: str, client_id: str) -> Received:
    """What a newcomer subscribing to ``topic`` gets first (the retained message)."""
    client = MQTTClient(client_id=client_id, config={"auto_reconnect": False})
    await client.connect(broker_uri(broker), cleansession=True)
    try:
        await client.subscribe([(topic, 1)])
        msg = await client.deliver_message(timeout_duration=WAIT_S)
        assert msg is not None
        return Received(msg.topic, bytes(msg.data), bool(msg.retain))
    finally:
        await client.disconnect()


def run_micropython(script: str, cwd: Path, data: object = None) -> object:
    """Run ``script`` under the MicroPython unix port with firmware_mpy/ importable. ``data`` is
    given to it as ``DATA`` (through a JSON file); the script prints one JSON document as its
    last line, which is returned."""
    (cwd / "data.json").write_text(json.dumps(data))
    prelude = (
        f"import sys\nsys.path.insert(0, {str(FIRMWARE_DIR)!r})\n"
        "import json\nwith open('data.json') as _f:\n    DATA = json.load(_f)\n"
    )
    path = cwd / "script.py"
    path.write_text(prelude + script)
    proc = subprocess.run(
        [venv_tool("micropython"), "-X", "heapsize=96K", str(path)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@contextlib.asynccontextmanager
async def open_gateway(
    broker: BrokerInfo, counters: dict[str, int] | None = None, *, clean: bool = True
) -> AsyncIterator[SigningGateway]:
    """A connected SigningGateway collecting everything devices publish (``clean=False``: a
    persistent session, so the broker queues what arrives while it is away)."""
    client = MQTTClient(
        client_id="test-gateway",
        config={"auto_reconnect": False, "keep_alive": 30},
    )
    await client.connect(broker_uri(broker), cleansession=clean)
    await client.subscribe(
        [("devices/+/status/#", 1), ("devices/+/events/#", 1), ("devices/+/logs", 1)]
    )
    gw = SigningGateway(client, counters=counters if counters is not None else {})
    task = asyncio.create_task(gw.collect(), name="test-gateway-collect")
    try:
        yield gw
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        with contextlib.suppress(Exception):
            await client.disconnect()
