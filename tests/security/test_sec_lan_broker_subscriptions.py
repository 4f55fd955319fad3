"""A machine's MQTT password (a stolen device's flash, or sniffed from plain MQTT on the LAN)
lets its holder subscribe under the machine's own ``commands/``, ``config/`` and ``acks``. The
ACL allowed any number of distinct filters there (``devices/M1/commands/x1``, ``.../x2``, ...).
amqtt 0.12.1 walks every filter of every session for each message it routes, so each filter
slowed every message of the whole site, and a persistent session kept them after the attacker
left (20,000 filters added about 40 ms to every message in the test). Now a device session
holds at most ``MAX_DEVICE_SUBSCRIPTIONS`` filters; more are refused in the SUBACK (0x80).
Real gateway, embedded amqtt broker.
"""

import struct
from pathlib import Path

from sec_broker_support import (
    ACCEPTED,
    SUBACK,
    SUBSCRIBE,
    creds,
    mqtt_string,
    packet,
    raw_session,
    running_site,
)
from standalone_site import MachineCreds

from edge.broker.hardened import MAX_DEVICE_SUBSCRIPTIONS

__all__ = ["creds"]

FILTERS = 20_000
PER_PACKET = 150  # each SUBSCRIBE stays under the device packet limit


async def test_a_device_cannot_pile_up_subscriptions(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    async with running_site("amqtt", tmp_path, creds) as site:
        granted: list[int] = []
        m1 = creds["M1"]
        async with raw_session(site.port, "M1", "M1", m1.secret, clean=False) as evil:
            assert await evil.connack() == ACCEPTED
            for pid, first in enumerate(range(0, FILTERS, PER_PACKET), start=1):
                body = struct.pack("!H", pid) + b"".join(
                    mqtt_string(f"devices/M1/commands/x{n}") + b"\x01"
                    for n in range(first, min(first + PER_PACKET, FILTERS))
                )
                await evil.send(packet(SUBSCRIBE, 2, body))
                granted += (await evil.expect(SUBACK, within=30))[2:]
        # the attacker has left; its persistent session (and its filters) stays for M1
        assert sum(code != 0x80 for code in granted) == MAX_DEVICE_SUBSCRIPTIONS
        # the firmware's own filters, re-sent at every reconnect, are still granted
        async with raw_session(site.port, "M1", "M1", m1.secret, clean=False) as device:
            assert await device.connack() == ACCEPTED
            assert await device.subscribe("devices/M1/commands/x0") == 1
        assert await site.presence_round_trip("M2") is None
