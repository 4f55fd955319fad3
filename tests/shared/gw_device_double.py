"""A device client that follows the firmware's MQTT contract, for gateway tests.

It is used where the test is about the gateway (timings, restarts), not the firmware: it checks
the command's HMAC, counter and journal the way the firmware does, answers with a dispense
result until acked (an ack counts only if the gateway signed it for this machine), and can jam
a slot or stay silent. Cash credits and dispense results are
signed like the firmware signs them (``contracts.signing``: key derived for the device ->
gateway direction, ``mid`` and ``seq`` in the body) and resent byte for byte.
"""

import asyncio
import contextlib
import os
import time
from types import TracebackType

from amqtt.client import MQTTClient
from amqtt.mqtt.constants import QOS_1

from contracts import topics
from contracts.device_messages import CashCredit, DispenseResult, Presence
from contracts.signing import (
    SignatureError,
    down_key,
    sign_device_message,
    up_key,
    verify_acks,
    verify_command,
)


def first_seq() -> int:
    """Where a fresh double starts counting: like a fresh firmware journal it starts from the
    clock (finer here, as several doubles of one machine may start within a second)."""
    return time.time_ns() // 1000


class DeviceDouble:
    def __init__(
        self,
        machine_id: str,
        password: str,
        command_key: str,
        port: int,
        *,
        silent: bool = False,
        last_ctr: int = 0,
    ) -> None:
        self.machine_id = machine_id
        self._password = password
        self._key = down_key(bytes.fromhex(command_key))
        self.up_key = up_key(bytes.fromhex(command_key))
        self.seq = first_seq()
        self._port = port
        self.silent = silent  # receives commands but never runs or answers them
        self.jammed: set[str] = set()
        self.journal: dict[str, str] = {}  # cmd_id -> result
        self.motor_runs: list[str] = []
        self.received: list[bytes] = []
        self.refused: list[str] = []
        self.acked: set[str] = set()
        self.last_ctr = last_ctr  # persisted by the firmware: survives its restarts
        self._client = MQTTClient(client_id=machine_id, config={"auto_reconnect": False})
        self._task: asyncio.Task[None] | None = None
        self._unacked: dict[str, tuple[str, bytes]] = {}

    async def __aenter__(self) -> "DeviceDouble":
        uri = f"mqtt://{self.machine_id}:{self._password}@127.0.0.1:{self._port}"
        await self._client.connect(uri)
        base = f"{topics.ROOT}/{self.machine_id}"
        await self._client.subscribe(
            [(f"{base}/{topics.DISPENSE_COMMAND}", QOS_1), (f"{base}/{topics.ACKS}", QOS_1)]
        )
        await self._publish(topics.PRESENCE, Presence(online=True, fw="double").model_dump_json())
        self._task = asyncio.create_task(self._loop(), name=f"double-{self.machine_id}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self._client.disconnect()

    async def _publish(self, suffix: str, payload: str | bytes) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        await self._client.publish(topics.topic(self.machine_id, suffix), data, qos=QOS_1)

    async def publish_raw(self, suffix: str, payload: bytes) -> None:
        await self._publish(suffix, payload)

    async def publish_anywhere(self, topic_name: str, payload: bytes) -> None:
        """Publish outside its own tree (what the broker ACL must drop)."""
        await self._client.publish(topic_name, payload, qos=QOS_1)

    def sign(self, fields: dict[str, object], *, seq: int | None = None) -> bytes:
        """``fields`` as this machine signs them, with the next seq (or ``seq``)."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        return sign_device_message(self.up_key, self.machine_id, seq, fields)

    async def insert_coin(self, amount: int) -> str:
        credit = CashCredit(id=os.urandom(16).hex(), amount=amount, ts=int(time.time()))
        body = self.sign(credit.model_dump(mode="json"))
        self._unacked[credit.id] = (topics.CASH_CREDIT, body)
        await self._publish(topics.CASH_CREDIT, body)
        return credit.id

    async def _loop(self) -> None:
        while True:
            try:
                message = await self._client.deliver_message(timeout_duration=0.5)
            except TimeoutError:
                for suffix, body in list(self._unacked.values()):
                    await self._publish(suffix, body)  # retried until acked, like the firmware
                continue
            if message is None:
                return
            data = bytes(message.data or b"")
            if message.topic.endswith(topics.ACKS):
                # Like the firmware: only an ack the gateway signed for this machine counts.
                try:
                    acks = verify_acks(self._key, data)
                except SignatureError:
                    self.refused.append("ack_signature")
                    continue
                if acks.mid != self.machine_id:
                    self.refused.append("ack_machine")
                    continue
                for event_id in acks.ids:
                    self.acked.add(event_id)
                    self._unacked.pop(event_id, None)
                continue
            self.received.append(data)
            await self._on_command(data)

    async def _on_command(self, data: bytes) -> None:
        try:
            body = verify_command(self._key, data)
        except SignatureError:
            self.refused.append("signature")
            return
        if body.mid != self.machine_id:
            self.refused.append("machine")
            return
        if body.cmd_id in self.journal:
            await self._report(body.cmd_id, body.order_id, body.item_id, body.slot)
            return
        if body.ctr <= self.last_ctr:
            self.refused.append("counter")
            return
        if self.silent:
            return
        self.last_ctr = body.ctr
        self.motor_runs.append(body.cmd_id)
        self.journal[body.cmd_id] = "failed" if body.slot in self.jammed else "ok"
        await self._report(body.cmd_id, body.order_id, body.item_id, body.slot)

    async def answer_late(self, payload: bytes, result: str) -> None:
        """Report an outcome for a command it received while silent (a slow device)."""
        body = verify_command(self._key, payload)
        self.journal[body.cmd_id] = result
        await self._report(body.cmd_id, body.order_id, body.item_id, body.slot)

    async def _report(self, cmd_id: str, order_id: str, item_id: str, slot: str) -> None:
        result = self.journal[cmd_id]
        message = DispenseResult(
            id=cmd_id,
            cmd_id=cmd_id,
            order_id=order_id,
            item_id=item_id,
            slot=slot,
            result=result,  # type: ignore[arg-type]
            reason="jam" if result == "failed" else None,
            ts=int(time.time()),
        )
        body = self.sign(message.model_dump(mode="json"))
        self._unacked[cmd_id] = (topics.DISPENSE_RESULT, body)
        await self._publish(topics.DISPENSE_RESULT, body)


__all__ = ["DeviceDouble"]
