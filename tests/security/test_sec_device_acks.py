"""Forged acks never make the firmware forget a money event.

An ack on ``devices/{id}/acks`` makes a device drop journalled money events. Only the gateway's
client may publish there (broker ACL), but MQTT on the site LAN is plain text: a man in the
middle of a device's connection, or a broker bug, could ack a cash credit the gateway never
recorded, and the money would be lost. So acks are signed with the machine's gateway-to-device
key (``contracts.signing.sign_acks``), and the real firmware, on the MicroPython unix port,
drops an event only on an ack whose signature and ``mid`` verify. Here a client allowed to
publish acks (the test's own broker lets anyone) sends every forgery we could think of for a
pending cash credit: it stays in the flash journal and keeps being re-sent; the refusals are
logged and counted in the device's health; then the genuine signed ack removes it.
"""

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from amqtt.client import MQTTClient
from brokers import anonymous_amqtt
from polling import wait_for

from contracts import topics
from contracts.device_messages import Health
from contracts.signing import down_key, sign_acks, up_key, verify_device_message
from tools.virtual_esp32 import VirtualDevice

MID = "VM1"


@dataclass
class AckSender:
    """A client the broker lets publish on acks (what a man in the middle or a broker bug
    amounts to). It records what the device publishes."""

    client: MQTTClient
    received: list[tuple[str, bytes]] = field(default_factory=list)

    async def collect(self) -> None:
        while True:
            message = await self.client.deliver_message()
            if message is not None:
                self.received.append((message.topic, bytes(message.data or b"")))

    async def ack(self, payload: bytes) -> None:
        await self.client.publish(topics.topic(MID, topics.ACKS), payload, qos=1)

    def cash_sends(self, secret: bytes, credit_id: str) -> int:
        """How often the device has published this credit so far."""
        count = 0
        for topic, payload in self.received:
            if topic == topics.topic(MID, topics.CASH_CREDIT):
                _header, body = verify_device_message(up_key(secret), payload)
                count += json.loads(body)["id"] == credit_id
        return count

    def last_health(self) -> Health | None:
        healths = [p for t, p in self.received if t == topics.topic(MID, topics.HEALTH)]
        return Health.model_validate_json(healths[-1]) if healths else None


@contextlib.asynccontextmanager
async def ack_sender(port: int) -> AsyncIterator[AckSender]:
    client = MQTTClient(client_id="ack-sender", config={"auto_reconnect": False})
    await client.connect(f"mqtt://127.0.0.1:{port}/", cleansession=True)
    await client.subscribe(
        [(f"{topics.ROOT}/{MID}/status/#", 1), (f"{topics.ROOT}/{MID}/events/#", 1)]
    )
    sender = AckSender(client)
    task = asyncio.create_task(sender.collect())
    try:
        yield sender
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        with contextlib.suppress(Exception):
            await client.disconnect()


def _install(flash: Path, port: int, secret: bytes) -> None:
    VirtualDevice.install(
        flash,
        {
            "machine_id": MID,
            "mqtt_host": "127.0.0.1",
            "mqtt_port": port,
            "mqtt_password": "pw-VM1",
            "command_key": secret.hex(),
            "sim_slots": {"A1": 5},
            "resend_interval_s": 1,
            "health_interval_s": 1,
            "mqtt_keepalive_s": 10,
            "backoff_min_ms": 100,
            "backoff_max_ms": 500,
        },
    )


def _pending(flash: Path, event_id: str) -> bool:
    """Whether the flash journal holds ``event_id`` not yet acked."""
    entries = json.loads((flash / "journal.json").read_text())["e"]
    return any(entry[0] == event_id and not entry[3] for entry in entries)


def _tampered(secret: bytes, credit_id: str) -> bytes:
    """A genuine ack for another event, its body edited to name the credit."""
    genuine = json.loads(sign_acks(down_key(secret), MID, ["someother01"], int(time.time())))
    genuine["body"] = genuine["body"].replace("someother01", credit_id)
    return json.dumps(genuine, separators=(",", ":")).encode()


async def test_forged_acks_leave_the_cash_credit_journalled_and_resent(tmp_path: Path) -> None:
    secret = os.urandom(32)
    other_secret = os.urandom(32)  # machine VM2's
    flash = tmp_path / "flash-VM1"
    now = int(time.time())
    async with anonymous_amqtt() as port, ack_sender(port) as sender:
        _install(flash, port, secret)
        async with VirtualDevice(flash) as device:
            await device.wait_online(timeout=20)
            await device.sim("coin", amount=1000)

            async def first_send() -> bool:
                return any(t.endswith(topics.CASH_CREDIT) for t, _p in sender.received)

            await wait_for(first_send)
            cash = next(p for t, p in sender.received if t.endswith(topics.CASH_CREDIT))
            credit_id = json.loads(verify_device_message(up_key(secret), cash)[1])["id"]
            assert _pending(flash, credit_id)

            forgeries = [
                # the old, unsigned form
                (json.dumps({"ids": [credit_id]}).encode(), "malformed_envelope"),
                # signed with a key that is not this machine's
                (sign_acks(down_key(os.urandom(32)), MID, [credit_id], now), "bad_signature"),
                # VM2's genuine ack, sent to VM1
                (sign_acks(down_key(other_secret), "VM2", [credit_id], now), "bad_signature"),
                # signed with VM1's device-to-gateway key (what a captured event is signed with)
                (sign_acks(up_key(secret), MID, [credit_id], now), "bad_signature"),
                # a genuine ack for another event, edited
                (_tampered(secret, credit_id), "bad_signature"),
                # VM1's key but addressed to VM2 (a config cloned onto two machines)
                (sign_acks(down_key(secret), "VM2", [credit_id], now), "wrong_mid"),
            ]
            for refused, (payload, reason) in enumerate(forgeries, start=1):
                mark = len(device.output_lines)
                await sender.ack(payload)
                await device.wait_output(
                    rf"^LOG warning refused acks: {reason} \({refused} so far\)$", start=mark
                )
                sends = sender.cash_sends(secret, credit_id)

                async def resent(before: int = sends) -> bool:
                    return sender.cash_sends(secret, credit_id) > before

                await wait_for(resent)  # still sent: the device has not forgotten it
                assert _pending(flash, credit_id)

            async def counted() -> bool:
                health = sender.last_health()
                return health is not None and health.acks_refused == len(forgeries)

            await wait_for(counted)

            # The gateway's genuine signed ack: now, and only now, the credit is done.
            mark = len(device.output_lines)
            await sender.ack(sign_acks(down_key(secret), MID, [credit_id], int(time.time())))
            await device.wait_output(r"^EVENTS acked 1 pending 0$", start=mark)
            assert not _pending(flash, credit_id)
            assert (await device.sim("state"))["coins_pending"] == 0
