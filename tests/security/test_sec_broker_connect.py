"""Attack 1: a refused CONNECT with a victim's client id, clean_session=0 and a will on the
victim's cash topic used to replace the victim session's will, drop its connection and get the
will published (as real cash). A refused CONNECT must change nothing, on both brokers."""

from pathlib import Path

import pytest
from gw_support import make_machine
from polling import wait_for
from sec_broker_support import (
    ACCEPTED,
    BROKERS,
    FORGED_CASH,
    NOT_AUTHORIZED,
    VARIANTS,
    BrokerKind,
    Site,
    Variant,
    Will,
    attack_connect,
    creds,
    firmware_m1,
    link_ups,
    raw_connection,
    raw_session,
    raw_victim,
    refused_connect,
    running_site,
)
from standalone_site import MachineCreds

import edge.broker.hardened as hardened
from contracts.sync import StateResponse
from edge.app import Gateway

__all__ = ["creds"]  # the session fixture, imported so pytest finds it


async def _nothing_reached_the_gateway(site: Site, traffic_before: float) -> None:
    # M2's presence is sent after the attack: once the gateway has it, a will published by the
    # attack would have arrived before it.
    await site.presence_round_trip("M2")
    after = site.gateway_traffic()
    assert after == traffic_before + 1, "the gateway received something besides M2's presence"
    assert await site.cash_credits() == []


@pytest.mark.parametrize("retain", [False, True], ids=["will", "retained_will"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("broker", BROKERS)
async def test_refused_connect_with_victim_client_id_changes_nothing(
    tmp_path: Path,
    creds: dict[str, MachineCreds],
    broker: BrokerKind,
    variant: Variant,
    retain: bool,
) -> None:
    async with running_site(broker, tmp_path, creds) as site:
        async with raw_victim(site) as victim:
            traffic = site.gateway_traffic()
            answer = await refused_connect(site.port, attack_connect(creds, variant, retain))
            if broker == "mosquitto" and variant == "other_machine":
                # use_username_as_clientid makes this CONNECT M2's own session: M1's is not
                # touched. Mosquitto 2.0.11 accepts the will on M1's topic at CONNECT and
                # checks it against the ACL when publishing it, at the abrupt close below.
                assert answer in (ACCEPTED, NOT_AUTHORIZED)
            else:
                assert answer == NOT_AUTHORIZED
            assert await victim.alive(), "the victim's connection was dropped"
            await _nothing_reached_the_gateway(site, traffic)

        # The victim now drops without DISCONNECT: the broker publishes the session's will,
        # which must still be the victim's own offline presence.
        async def m1_offline() -> bool:
            machines = await site.gateway.store.list_machines()
            return any(m.id == "M1" and not m.online for m in machines)

        await wait_for(m1_offline, within=10)
        await site.presence_round_trip("M2")
        assert await site.cash_credits() == []
        if broker == "amqtt":
            refused = site.metric("gateway_mqtt_connects_refused_total", {"reason": "credentials"})
            assert refused == 1


@pytest.mark.parametrize("broker", BROKERS)
async def test_refused_connects_leave_the_firmware_connected(
    tmp_path: Path, creds: dict[str, MachineCreds], broker: BrokerKind
) -> None:
    """The real firmware (MicroPython unix port) is the victim: it connects with
    clean_session=0 and a retained offline will, as on a real ESP32."""
    async with (
        running_site(broker, tmp_path, creds) as site,
        firmware_m1(site, tmp_path / "flash-M1") as device,
    ):
        ups = link_ups(device)
        for variant in VARIANTS:
            for retain in (False, True):
                await refused_connect(site.port, attack_connect(creds, variant, retain))
        # The firmware keeps reporting, so the gateway's traffic is not flat here (the raw
        # victim tests check that exactly); no cash event may have arrived.
        await site.presence_round_trip("M2")
        assert site.metric("gateway_mqtt_messages_total", {"kind": "events/cash"}) == 0
        assert await site.cash_credits() == []
        assert link_ups(device) == ups, "the firmware had to reconnect"
        assert not any(line.startswith("LINK down") for line in device.output_lines)


@pytest.mark.parametrize("broker", BROKERS)
async def test_will_on_a_foreign_topic_is_refused_at_connect(
    tmp_path: Path, creds: dict[str, MachineCreds], broker: BrokerKind
) -> None:
    will = Will("devices/M1/events/cash", FORGED_CASH, qos=1, retain=False)
    async with running_site(broker, tmp_path, creds) as site:
        traffic = site.gateway_traffic()
        async with raw_session(site.port, "M2", "M2", creds["M2"].secret, will=will) as conn:
            # Mosquitto 2.0.11 accepts the CONNECT and refuses the will when it would publish
            # it (this abrupt close); the embedded broker refuses the CONNECT itself.
            expected = NOT_AUTHORIZED if broker == "amqtt" else ACCEPTED
            assert await conn.connack() == expected
        await _nothing_reached_the_gateway(site, traffic)
    if broker == "amqtt":
        assert site.metric("gateway_mqtt_connects_refused_total", {"reason": "will"}) == 1


@pytest.mark.parametrize(
    ("topic", "retain"),
    [("devices/M2/events/cash", False), ("devices/M2/status/health", True)],
    ids=["own_cash_topic", "retained_on_own_health"],
)
async def test_amqtt_will_other_than_own_presence_is_refused(
    tmp_path: Path, creds: dict[str, MachineCreds], topic: str, retain: bool
) -> None:
    """Stricter than the topic ACL: a will is published when the broker, not the device, says
    so, so the only will a device may leave is its own offline presence. (Mosquitto's ACL has
    no separate rule for wills: it accepts these, and the gateway's signature check is what
    refuses a will posing as a money event; see docs/security.md.)"""
    will = Will(topic, FORGED_CASH, qos=1, retain=retain)
    async with running_site("amqtt", tmp_path, creds) as site:
        async with raw_session(site.port, "M2", "M2", creds["M2"].secret, will=will) as conn:
            assert await conn.connack() == NOT_AUTHORIZED
        presence = Will("devices/M2/status/presence", b'{"online":false}', qos=1, retain=True)
        secret = creds["M2"].secret
        async with raw_session(site.port, "M2", "M2", secret, will=presence) as conn:
            assert await conn.connack() == ACCEPTED


async def test_amqtt_will_is_rechecked_when_published(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    """A machine decommissioned while connected loses its will too: the connection drops
    later and nothing is published in its name."""
    will = Will("devices/M2/status/presence", b'{"online":false}', qos=1, retain=True)
    async with running_site("amqtt", tmp_path, creds) as site:
        gateway: Gateway = site.gateway
        async with raw_session(site.port, "M2", "M2", creds["M2"].secret, will=will) as conn:
            assert await conn.connack() == ACCEPTED
            gone = make_machine("M2", creds["M2"], stock={"A1": 3}, version=2,
                                status="decommissioned")  # fmt: skip
            await gateway.store.apply_state(StateResponse(cursor=2, machines=[gone]))
            traffic = site.gateway_traffic()
        # closed without DISCONNECT: the broker would publish the will now
        await site.presence_round_trip("M1")
        assert site.gateway_traffic() == traffic + 1
        assert site.metric("gateway_mqtt_wills_dropped_total") == 1


async def test_amqtt_takeover_by_the_same_identity_publishes_only_the_old_will(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    """The legitimate take-over still works: the device reconnects before the broker noticed
    its old connection died; the old connection ends, the new one is served."""
    async with running_site("amqtt", tmp_path, creds) as site, raw_victim(site) as old:
        will = Will("devices/M1/status/presence", b'{"online":false}', qos=1, retain=True)
        secret = creds["M1"].secret
        async with raw_session(site.port, "M1", "M1", secret, will=will) as new:
            assert await new.connack() == ACCEPTED
            assert not await old.alive()
            assert await new.alive()
            await new.publish("devices/M1/status/presence", b'{"online":true}', retain=True)
            await site.presence_round_trip("M2")
            assert (await site.gateway.store.list_machines())[0].online


async def test_amqtt_connection_without_connect_is_closed(
    tmp_path: Path, creds: dict[str, MachineCreds], monkeypatch: pytest.MonkeyPatch
) -> None:
    """amqtt waits forever for the first packet: idle sockets would pile up unauthenticated."""
    monkeypatch.setattr(hardened, "CONNECT_TIMEOUT_S", 0.5)
    async with running_site("amqtt", tmp_path, creds) as site:
        async with raw_connection(site.port) as idle:
            assert await idle.read_packet(within=5) is None
        assert site.metric("gateway_mqtt_connects_refused_total", {"reason": "timeout"}) == 1
        await site.presence_round_trip("M2")
