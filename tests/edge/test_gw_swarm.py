"""Many devices on one gateway: concurrent connects, retained presence, the broker's indexes.

A swarm of simulated devices (``tools.bench.device_swarm``: raw MQTT 3.1.1 as the firmware
speaks it, each from its own loopback address) against a real gateway. Before the fixes in
``edge/broker/hardened.py`` amqtt lost routed messages while clients subscribed at the same time
("dictionary changed size during iteration") and matched every topic against every filter.
"""

import asyncio
import random
from pathlib import Path

import pytest
from gw_support import gateway_settings
from polling import wait_for

from contracts.credentials import hash_secret
from contracts.sync import CatalogItemState, MachineState, StateResponse
from edge.app import Gateway
from edge.broker.hardened import HardenedBroker, TopicIndex, topic_prefix
from edge.devices.status import StatusWriter
from tools.bench.device_swarm import Device, Stats

SWARM = 200


def _machine(machine_id: str, secret_hash: str) -> MachineState:
    item = CatalogItemState(
        id=f"{machine_id}-A1", slot="A1", name="Water", price=1000, currency="INR", quantity=1
    )
    return MachineState(
        id=machine_id, tenant_id="t", site_id="s", name=machine_id, status="active",
        mqtt_secret_hash=secret_hash, command_key="0" * 64, catalog=[item], version=1,
    )  # fmt: skip


def _broker(gateway: Gateway) -> HardenedBroker:
    broker = gateway._broker._broker  # type: ignore[union-attr]
    assert isinstance(broker, HardenedBroker)
    return broker


async def test_a_swarm_connects_at_once_without_refusals_and_keeps_its_presence(
    tmp_path: Path,
) -> None:
    ids = [f"SW{i:04d}" for i in range(SWARM)]
    secret = "swarm-secret-0123456789abcdef"
    secret_hash = hash_secret(secret, iterations=1000)  # one full check per machine still
    async with Gateway(gateway_settings(tmp_path / "gw")) as gateway:
        await gateway.store.apply_state(
            StateResponse(cursor=1, machines=[_machine(m, secret_hash) for m in ids])
        )
        stats = Stats()
        devices = [
            Device(i, mid, secret, "127.0.0.1", gateway.mqtt_port, 3600.0, stats)
            for i, mid in enumerate(ids)
        ]
        stop = asyncio.Event()
        runners = [asyncio.create_task(d.run(stop)) for d in devices]
        try:
            await wait_for(lambda: _true(all(d.ready.is_set() for d in devices)), within=120)
            # Every first attempt was answered and accepted: no refusal, no close, no retry.
            assert (stats.connack_refused, stats.closed_before_connack, stats.lost) == (0, 0, 0)
            assert len(stats.ready_at) == SWARM
            refused = gateway.metrics.mqtt_connects_refused.collect()[0].samples
            assert [s for s in refused if s.name.endswith("_total") and s.value] == []

            async def all_online() -> bool:
                return (await gateway.store.device_counts())["online"] == SWARM

            await wait_for(all_online, within=60)
            broker = _broker(gateway)
            for mid in ids:
                retained = broker._retained_messages[f"devices/{mid}/status/presence"]
                assert b'"online": true' in bytes(retained.data)
            # Each device holds exactly its three filters, indexed under its own root.
            for mid in ids:
                assert sorted(broker._subscriptions.under(f"devices/{mid}")) == sorted(
                    [f"devices/{mid}/commands/#", f"devices/{mid}/acks", f"devices/{mid}/config/#"]
                )

            # One device drops without a DISCONNECT: its will goes out, retained, and the
            # gateway marks it (and only it) offline.
            gone = devices[7]
            gone_task = runners[7]
            gone_task.cancel()
            await asyncio.gather(gone_task, return_exceptions=True)

            async def one_offline() -> bool:
                return (await gateway.store.device_counts())["online"] == SWARM - 1

            await wait_for(one_offline, within=60)
            retained = broker._retained_messages[f"devices/{gone.mid}/status/presence"]
            assert bytes(retained.data) == b'{"online": false}'
            machines = {m.id: m.online for m in await gateway.store.list_machines()}
            assert [m for m, online in machines.items() if not online] == [gone.mid]
        finally:
            stop.set()
            await asyncio.gather(*runners, return_exceptions=True)


async def _true(value: bool) -> bool:
    return value


# --- the broker's topic index ------------------------------------------------------------------


def _matches(topic_name: str, topic_filter: str) -> bool:
    """MQTT matching as amqtt 0.12.1 does it (Broker._matches), without a broker."""
    sub, pub = topic_filter.split("/"), topic_name.split("/")
    for i, level in enumerate(sub):
        if level == "#":
            return True
        if i >= len(pub) or level not in ("+", pub[i]):
            return False
    return len(sub) == len(pub)


def test_topic_index_candidates_hold_every_match() -> None:
    rng = random.Random(7)
    levels = ["devices", "M1", "M2", "status", "presence", "commands", "acks", "x"]

    def name(wild: bool) -> str:
        parts = [rng.choice(levels) for _ in range(rng.randint(1, 4))]
        if wild:
            for i in range(len(parts)):
                if rng.random() < 0.25:
                    parts[i] = "+"
            if rng.random() < 0.3:
                parts.append("#")
        return "/".join(parts)

    filters: TopicIndex[int] = TopicIndex()
    retained: TopicIndex[int] = TopicIndex()
    for _ in range(400):
        filters[name(True)] = 1
        retained[name(False)] = 1
    for key in list(filters)[::3]:
        del filters[key]
    for key in list(retained)[::4]:
        retained.pop(key)
    # The index follows the dict after additions and removals.
    assert sorted(k for keys in filters.by_prefix.values() for k in keys) == sorted(filters)
    assert sorted(k for keys in retained.by_prefix.values() for k in keys) == sorted(retained)
    for _ in range(300):
        topic_name = name(False)
        expected = {f for f in filters if _matches(topic_name, f)}
        assert expected <= set(filters.candidates_for_topic(topic_name))
        topic_filter = name(True)
        expected = {t for t in retained if _matches(t, topic_filter)}
        assert expected <= set(retained.candidates_for_filter(topic_filter))
    filters.clear()
    assert filters.by_prefix == {}


def test_topic_prefix() -> None:
    assert topic_prefix("devices/M1/status/presence") == "devices/M1"
    assert topic_prefix("devices/M1") == "devices/M1"
    assert topic_prefix("devices/+/status/#") is None
    assert topic_prefix("devices") is None
    assert topic_prefix("#") is None


# --- coalesced presence and health writes ------------------------------------------------------


class _Store:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.gate = asyncio.Event()

    async def set_presence(self, machine_id: str, online: bool, fw: str | None) -> None:
        await self.gate.wait()
        self.calls.append(("presence", machine_id, str(online), str(fw)))

    async def touch_machine(self, machine_id: str) -> None:
        await self.gate.wait()
        self.calls.append(("touch", machine_id))


async def test_presence_and_health_writes_coalesce_in_order() -> None:
    store = _Store()
    writer = StatusWriter(store)  # type: ignore[arg-type]
    writer.start()
    try:
        writer.presence("M1", True, "1.0")  # taken at once, held at the gate
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        writer.touch("M1")
        writer.presence("M1", False, None)  # replaces the touch; keeps no fw of its own
        writer.touch("M1")  # a pending presence sets last_seen already
        writer.touch("M2")
        writer.touch("M2")
        store.gate.set()
        await writer.flush()
        assert store.calls == [
            ("presence", "M1", "True", "1.0"),
            ("presence", "M1", "False", "None"),
            ("touch", "M2"),
        ]
    finally:
        await writer.close()


@pytest.mark.parametrize("online", [True, False])
async def test_a_later_presence_keeps_an_earlier_pending_fw(online: bool) -> None:
    store = _Store()
    store.gate.set()
    writer = StatusWriter(store)  # type: ignore[arg-type]
    writer.presence("M1", True, "2.0")
    writer.presence("M1", online, None)
    writer.start()
    await writer.flush()
    await writer.close()
    assert store.calls == [("presence", "M1", str(online), "2.0")]
