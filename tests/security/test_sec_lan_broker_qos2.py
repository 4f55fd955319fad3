"""A machine's MQTT password (a stolen device's flash, or sniffed from plain MQTT on the LAN)
and QoS 2 PUBLISHes that are never released: amqtt 0.12.1 keeps each one in the session's
``inflight_in`` and a task waiting for its PUBREL with no timeout, and when the connection ends
the waiting tasks are cancelled but the messages stay. Against `make demo` 65,535 such 7 KB
publishes (7 s) took the gateway from 185 MB to 760 MB, a second round to 1.25 GB, and
``/health`` took 4.5 s: a few rounds and the gateway is out of memory. Nothing in the protocol
uses QoS 2 (devices and the gateway publish at QoS 1), so a QoS 2 PUBLISH now closes the
connection at its fixed header, before its body is read. Real gateway, embedded amqtt broker.
"""

import asyncio
import struct
from pathlib import Path

from sec_broker_support import (
    ACCEPTED,
    PUBLISH,
    creds,
    mqtt_string,
    packet,
    raw_session,
    running_site,
)
from standalone_site import MachineCreds

__all__ = ["creds"]


def _qos2_publish(topic: str, packet_id: int, payload: bytes) -> bytes:
    return packet(PUBLISH, 2 << 1, mqtt_string(topic) + struct.pack("!H", packet_id) + payload)


async def test_unreleased_qos2_publishes_cannot_pile_up(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    async with running_site("amqtt", tmp_path, creds) as site:
        m1 = creds["M1"]
        async with raw_session(site.port, "M1", "M1", m1.secret, clean=True) as evil:
            assert await evil.connack() == ACCEPTED
            sent = 0
            try:
                for packet_id in range(1, 2001):
                    await evil.send(_qos2_publish("devices/M1/logs", packet_id, b"x" * 4000))
                    sent += 1
                    await asyncio.sleep(0)
            except ConnectionError:
                pass
            # the broker closed the connection at the first QoS 2 header
            assert await evil.read_packet(within=5) is None
        assert sent < 2000
        rejected = site.metric("gateway_mqtt_rejected_total", {"reason": "qos2"})
        assert rejected == 1
        assert await site.presence_round_trip("M2") is None  # the broker serves the rest
        # QoS 1, what the firmware uses, still passes
        async with raw_session(site.port, "M1", "M1", m1.secret, clean=True) as device:
            assert await device.connack() == ACCEPTED
            await device.publish("devices/M1/logs", b'{"msg":"still here"}')
