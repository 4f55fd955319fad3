"""Attack 7 (second half): the broker accepted a 16 MB publish from a device. A packet over
the limit (``mqtt_max_packet_bytes``) now closes the connection before its body is read, is
counted, and the broker goes on serving everyone else."""

import asyncio
import contextlib
from pathlib import Path

import pytest
from sec_broker_support import (
    ACCEPTED,
    BROKERS,
    PUBLISH,
    BrokerKind,
    RawConnection,
    Will,
    connect_packet,
    creds,
    mqtt_string,
    raw_connection,
    raw_session,
    raw_victim,
    running_site,
    varint,
)
from standalone_site import MachineCreds

__all__ = ["creds"]  # the session fixture, imported so pytest finds it

CHUNK = 64 * 1024


async def _send_until_closed(conn: RawConnection, header: bytes, size: int) -> int:
    """Send ``header`` then ``size`` body bytes, as fast as the broker takes them; returns how
    many body bytes went out before the broker closed the connection."""
    sent = 0
    with contextlib.suppress(ConnectionError):
        await conn.send(header)
        while sent < size:
            n = min(CHUNK, size - sent)
            await conn.send(b"\0" * n)
            sent += n
    return sent


@pytest.mark.parametrize("size", [64 * 1024, 16 * 1024 * 1024], ids=["64KiB", "16MiB"])
@pytest.mark.parametrize("broker", BROKERS)
async def test_oversized_publish_closes_the_connection(
    tmp_path: Path, creds: dict[str, MachineCreds], broker: BrokerKind, size: int
) -> None:
    async with running_site(broker, tmp_path, creds) as site, raw_victim(site) as bystander:
        secret = creds["M2"].secret
        async with raw_session(site.port, "M2", "M2", secret, clean=True) as m2:
            assert await m2.connack() == ACCEPTED
            topic = mqtt_string("devices/M2/events/cash")
            body_len = size - len(topic)
            header = bytes([PUBLISH << 4]) + varint(size) + topic
            sender = asyncio.create_task(_send_until_closed(m2, header, body_len))
            # The broker closes without reading the body: the reader sees the end of stream.
            assert await m2.read_packet(within=20) is None
            sent = await asyncio.wait_for(sender, timeout=20)
            if broker == "amqtt" and size > 1024 * 1024:
                # aborted at the fixed header: most of the 16 MiB never left this side
                assert sent < size // 2
        # Everyone else is still served: the bystander's connection and a new session.
        assert await bystander.alive()
        await site.presence_round_trip("M2")
        assert await site.cash_credits() == []
        if broker == "amqtt":
            assert site.metric("gateway_mqtt_oversized_packets_total") == 1


async def test_amqtt_oversized_connect_is_closed_before_authentication(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    """Nobody needs credentials to send a CONNECT: a huge will in one is cut off too."""
    async with running_site("amqtt", tmp_path, creds) as site:
        will = Will("devices/M1/status/presence", b"x" * 20000, qos=1, retain=True)
        async with raw_connection(site.port) as conn:
            with contextlib.suppress(ConnectionError):
                await conn.send(connect_packet("M1", "M1", creds["M1"].secret, will=will))
            assert await conn.read_packet(within=5) is None
        assert site.metric("gateway_mqtt_oversized_packets_total") == 1
        await site.presence_round_trip("M2")


async def test_amqtt_packet_under_the_limit_passes(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    """A device message as large as the gateway takes (max_mqtt_payload) still reaches it."""
    async with running_site("amqtt", tmp_path, creds) as site:
        traffic = site.gateway_traffic()
        limit = site.gateway.settings.max_mqtt_payload
        async with raw_session(site.port, "M2", "M2", creds["M2"].secret, clean=True) as m2:
            assert await m2.connack() == ACCEPTED
            log = b'{"level":"info","msg":"' + b"x" * (limit - 100) + b'","ts":1}'
            assert len(log) <= limit
            await m2.publish("devices/M2/logs", log)
            assert await m2.alive()
        await site.presence_round_trip("M2")
        # the log (whatever the gateway made of it) and the presence
        assert site.gateway_traffic() == traffic + 2
        assert site.metric("gateway_mqtt_oversized_packets_total") == 0


async def test_amqtt_malformed_remaining_length_closes_the_connection(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    """A remaining length longer than four bytes is a protocol error; amqtt 0.12.1 discards
    it and goes on reading from the middle of the stream."""
    async with running_site("amqtt", tmp_path, creds) as site:
        async with raw_session(site.port, "M2", "M2", creds["M2"].secret, clean=True) as m2:
            assert await m2.connack() == ACCEPTED
            with contextlib.suppress(ConnectionError):
                await m2.send(bytes([PUBLISH << 4, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]))
            assert await m2.read_packet(within=5) is None
        await site.presence_round_trip("M2")
