"""Attack 7 (first half): retained messages reached sessions that never subscribed to them
(another machine's presence, a forged retained cash event), because amqtt 0.12.1 sends a new
session the retained messages of every client's subscriptions."""

from pathlib import Path

import pytest
from polling import wait_for
from sec_broker_support import (
    ACCEPTED,
    BROKERS,
    PUBLISH,
    BrokerKind,
    Site,
    creds,
    raw_session,
    running_site,
)
from standalone_site import MachineCreds

__all__ = ["creds"]  # the session fixture, imported so pytest finds it


async def _m2_retains_its_presence(site: Site) -> None:
    secret = site.creds["M2"].secret
    async with raw_session(site.port, "M2", "M2", secret, clean=True) as m2:
        assert await m2.connack() == ACCEPTED
        await m2.publish("devices/M2/status/presence", b'{"online":true}', retain=True)


@pytest.mark.parametrize("clean", [True, False], ids=["clean", "persistent"])
@pytest.mark.parametrize("broker", BROKERS)
async def test_retained_message_not_delivered_to_a_session_that_never_subscribed(
    tmp_path: Path, creds: dict[str, MachineCreds], broker: BrokerKind, clean: bool
) -> None:
    async with running_site(broker, tmp_path, creds) as site:
        await _m2_retains_its_presence(site)
        await site.presence_round_trip("M2")  # the retained one is stored by now
        secret = creds["M1"].secret
        for _ in range(2):  # a new session, then (persistent) the resumed one
            async with raw_session(site.port, "M1", "M1", secret, clean=clean) as m1:
                assert await m1.connack() == ACCEPTED
                assert await m1.collect(within=0.7) == []
                # Its own subscription brings nothing of M2's either.
                assert await m1.subscribe("devices/M1/commands/#") == 1
                assert await m1.collect(within=0.7) == []


@pytest.mark.parametrize("broker", BROKERS)
async def test_retained_message_not_delivered_through_a_refused_subscription(
    tmp_path: Path, creds: dict[str, MachineCreds], broker: BrokerKind
) -> None:
    async with running_site(broker, tmp_path, creds) as site:
        await _m2_retains_its_presence(site)
        await site.presence_round_trip("M2")
        async with raw_session(site.port, "M1", "M1", creds["M1"].secret, clean=True) as m1:
            assert await m1.connack() == ACCEPTED
            # The embedded broker refuses these; Mosquitto grants them and filters each
            # message by its read ACL instead. Either way nothing of M2's arrives.
            refused = 0x80 if broker == "amqtt" else 1
            assert await m1.subscribe("devices/#") == refused
            assert await m1.subscribe("devices/+/status/presence") == refused
            got = await m1.collect(within=0.7)
            assert [p for p in got if p[0] == PUBLISH] == []


async def _retained_for_the_gateway(site: Site, topic_filter: str) -> list[bytes]:
    """What a new subscriber with the gateway's rights gets as retained on ``topic_filter``
    (the gateway's own link gets the same at every reconnect). It borrows the gateway's
    identity, so the broker ends the gateway's link session meanwhile; the link reconnects."""
    settings = site.gateway.settings
    async with raw_session(
        site.port,
        settings.gateway_client_id,
        settings.gateway_client_id,
        settings.mqtt_password,
        clean=True,
    ) as observer:
        assert await observer.connack() == ACCEPTED
        await observer.subscribe(topic_filter)
        got = await observer.collect(within=0.7)
    bodies = [body for kind, _, body in got if kind == PUBLISH]

    async def relinked() -> bool:
        return site.gateway.link.connected

    await wait_for(relinked, within=15)
    return bodies


async def test_amqtt_retained_money_event_is_not_kept(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    """Only presence may be retained by a device: a retained cash event would be handed to the
    gateway again at each reconnect of its link. (Mosquitto has no such rule: it keeps it; the
    gateway's signed-message counter is what refuses the replay there.)"""
    async with running_site("amqtt", tmp_path, creds) as site:
        secret = creds["M2"].secret
        async with raw_session(site.port, "M2", "M2", secret, clean=True) as m2:
            assert await m2.connack() == ACCEPTED
            forged = b'{"id":"retainedcash1","amount":2000,"currency":"INR","ts":1}'
            await m2.publish("devices/M2/events/cash", forged, retain=True)
            await m2.publish("devices/M2/status/presence", b'{"online":true}', retain=True)
        await site.presence_round_trip("M1")
        assert await _retained_for_the_gateway(site, "devices/+/events/cash") == []
        presence = await _retained_for_the_gateway(site, "devices/+/status/presence")
        assert [body[2:28] for body in presence] == [b"devices/M2/status/presence"]
        assert site.metric("gateway_mqtt_retain_refused_total") == 1
