"""Broker ACL with real MQTT clients: devices stay in their own tree and never send commands."""

import contextlib
from collections.abc import AsyncIterator

import pytest
from amqtt.client import MQTTClient
from amqtt.errors import ConnectError
from amqtt.mqtt.constants import QOS_1
from gw_support import make_machine
from polling import wait_for
from standalone_site import MachineCreds

from contracts.signing import sign_device_message, up_key
from contracts.sync import StateResponse
from edge.app import Gateway
from edge.broker.acl import device_may_publish, device_may_subscribe


@contextlib.asynccontextmanager
async def mqtt(
    gateway: Gateway, client_id: str, username: str, password: str
) -> AsyncIterator[MQTTClient]:
    client = MQTTClient(client_id=client_id, config={"auto_reconnect": False})
    await client.connect(f"mqtt://{username}:{password}@127.0.0.1:{gateway.mqtt_port}")
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()


async def drain(client: MQTTClient, within: float) -> list[tuple[str, bytes]]:
    """Everything delivered until ``within`` seconds pass without a message."""
    got: list[tuple[str, bytes]] = []
    while True:
        try:
            message = await client.deliver_message(timeout_duration=within)
        except TimeoutError:
            return got
        if message is not None:
            got.append((message.topic, bytes(message.data or b"")))


def test_acl_rules() -> None:
    assert device_may_publish("M1", "devices/M1/events/dispense")
    assert device_may_publish("M1", "devices/M1/status/presence")
    assert not device_may_publish("M1", "devices/M2/events/dispense")
    assert not device_may_publish("M1", "devices/M1/commands/dispense")
    assert not device_may_publish("M1", "devices/M1/config/update")
    assert not device_may_publish("M1", "devices/M1/acks")
    assert not device_may_publish("M1", "devices/M1/events/#")
    assert device_may_subscribe("M1", "devices/M1/commands/dispense")
    assert device_may_subscribe("M1", "devices/M1/commands/#")
    assert device_may_subscribe("M1", "devices/M1/acks")
    assert not device_may_subscribe("M1", "devices/M2/commands/#")
    assert not device_may_subscribe("M1", "devices/+/commands/dispense")
    assert not device_may_subscribe("M1", "devices/#")
    assert not device_may_subscribe("M1", "devices/M1/events/cash")


async def test_device_cannot_reach_other_devices_or_commands(
    gateway: Gateway, creds: dict[str, MachineCreds]
) -> None:
    m1, m2 = creds["M1"], creds["M2"]
    async with (
        mqtt(gateway, "M1", "M1", m1.secret) as device_a,
        mqtt(gateway, "M2", "M2", m2.secret) as device_b,
    ):
        granted = await device_b.subscribe(
            [("devices/M2/commands/dispense", QOS_1), ("devices/M2/acks", QOS_1)]
        )
        assert granted == [QOS_1, QOS_1]
        refused = await device_a.subscribe([("devices/M2/commands/#", QOS_1)])
        assert refused == [0x80]

        # Device A forges B's cash credit, a command to B, and a command to itself.
        forged = b'{"id":"forged0001","amount":100000,"ts":1}'
        await device_a.publish("devices/M2/events/cash", forged, qos=QOS_1)
        await device_a.publish("devices/M2/commands/dispense", b"{}", qos=QOS_1)
        await device_a.publish("devices/M1/commands/dispense", b"{}", qos=QOS_1)
        await device_a.publish("devices/M2/acks", b'{"ids":[]}', qos=QOS_1)
        assert await drain(device_b, 0.5) == []
        # ... and the gateway persisted nothing from the forgery.
        assert await gateway.store.query("SELECT * FROM cash_credits") == []

        # The gateway's own client may publish commands; B receives them.
        await gateway.link.publish("devices/M2/commands/dispense", b'{"v":1}')
        received = await drain(device_b, 0.5)
        assert received == [("devices/M2/commands/dispense", b'{"v":1}')]

        # A's own, legitimate event still goes through (the pipe works).
        await device_a.publish("devices/M1/status/presence", b'{"online":true}', qos=QOS_1)

        async def m1_online() -> bool:
            return (await gateway.store.list_machines())[0].online

        await wait_for(m1_online)


@pytest.mark.parametrize(
    ("client_id", "username", "password_of"),
    [
        ("M1", "M1", None),  # wrong password
        ("M9", "M9", "M1"),  # unknown machine
        ("M2", "M1", "M1"),  # client id is not the machine id
        ("gateway", "gateway", "M1"),  # impersonating the gateway
    ],
)
async def test_bad_credentials_are_refused(
    gateway: Gateway,
    creds: dict[str, MachineCreds],
    client_id: str,
    username: str,
    password_of: str | None,
) -> None:
    password = creds[password_of].secret if password_of else "not-the-secret"
    with pytest.raises(ConnectError):
        async with mqtt(gateway, client_id, username, password):
            pass


async def test_anonymous_is_refused(gateway: Gateway) -> None:
    client = MQTTClient(client_id="M1", config={"auto_reconnect": False})
    with pytest.raises(ConnectError):
        await client.connect(f"mqtt://127.0.0.1:{gateway.mqtt_port}")


async def test_decommissioned_machine_is_refused(
    gateway: Gateway, creds: dict[str, MachineCreds]
) -> None:
    gone = make_machine("M2", creds["M2"], stock={"A1": 3}, version=2, status="decommissioned")
    await gateway.store.apply_state(StateResponse(cursor=2, machines=[gone]))
    with pytest.raises(ConnectError):
        async with mqtt(gateway, "M2", "M2", creds["M2"].secret):
            pass


def _with_will(topic: str, payload: str) -> MQTTClient:
    will = {"topic": topic, "message": payload, "qos": 1, "retain": False}
    return MQTTClient(client_id="M1", config={"auto_reconnect": False, "will": will})


async def test_last_will_outside_own_presence_is_refused(
    gateway: Gateway, creds: dict[str, MachineCreds]
) -> None:
    # The broker publishes a will without the topic plugin: a will on M2's cash topic would
    # credit M2 when M1's connection drops.
    url = f"mqtt://M1:{creds['M1'].secret}@127.0.0.1:{gateway.mqtt_port}"
    forged = _with_will("devices/M2/events/cash", '{"id":"willforge01","amount":2000,"ts":1}')
    with pytest.raises(ConnectError):
        await forged.connect(url)
    honest = _with_will("devices/M1/status/presence", '{"online": false}')
    await honest.connect(url)
    await honest.disconnect()
    rows = await gateway.store.query("SELECT id FROM cash_credits")
    assert rows == []


def _signed_credit(machine: MachineCreds, credit_id: str, seq: int) -> bytes:
    """A cash credit as the machine's firmware signs it (the gateway takes no other)."""
    fields = {"id": credit_id, "amount": 500, "ts": seq}
    return sign_device_message(up_key(bytes.fromhex(machine.command_key)), machine.id, seq, fields)


async def test_connected_session_loses_its_rights_at_decommission(
    gateway: Gateway, creds: dict[str, MachineCreds]
) -> None:
    async with mqtt(gateway, "M2", "M2", creds["M2"].secret) as device:
        credit = _signed_credit(creds["M2"], "beforedecom1", 1)
        await device.publish("devices/M2/events/cash", credit, qos=QOS_1)

        async def stored() -> bool:
            return bool(await gateway.store.query("SELECT id FROM cash_credits"))

        await wait_for(stored)
        gone = make_machine("M2", creds["M2"], stock={"A1": 3}, version=2, status="decommissioned")
        await gateway.store.apply_state(StateResponse(cursor=2, machines=[gone]))
        after = _signed_credit(creds["M2"], "afterdecom01", 2)
        with contextlib.suppress(Exception):  # the broker may drop the session instead
            await device.publish("devices/M2/events/cash", after, qos=QOS_1)
    # Another device's credit, sent after it, arrives: the refused one had its chance too.
    async with mqtt(gateway, "M1", "M1", creds["M1"].secret) as other:
        marker = _signed_credit(creds["M1"], "markerfromm1", 3)
        await other.publish("devices/M1/events/cash", marker, qos=QOS_1)

        async def marker_stored() -> bool:
            rows = await gateway.store.query("SELECT id FROM cash_credits")
            return any(r["id"] == "markerfromm1" for r in rows)

        await wait_for(marker_stored)
    rows = await gateway.store.query("SELECT id FROM cash_credits ORDER BY id")
    assert [r["id"] for r in rows] == ["beforedecom1", "markerfromm1"]
