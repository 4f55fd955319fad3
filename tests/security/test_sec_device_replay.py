"""Replays of genuine signed device messages: a captured cash credit sent again after the
gateway acked it changes nothing, also after the gateway was restarted on a restored older
database (the sidecar's high-water mark survives the restore); a genuine event delayed behind
newer ones (inside the window) still counts, exactly once. Real gateway, real amqtt broker, real
SQLite store, and the real firmware on the MicroPython unix port where the capture matters.
"""

import json
import os
import time
from pathlib import Path

from sec_device_support import Site, Sniffer, attacker, creds, make_machine, signed, wait_for
from standalone_site import MachineCreds

from contracts import topics
from contracts.sync import StateResponse
from edge.store.sequences import WINDOW, sidecar_path
from tools.virtual_esp32 import VirtualDevice

__all__ = ["creds"]


def _install(flash: Path, machine: MachineCreds, port: int) -> None:
    VirtualDevice.install(
        flash,
        {
            "machine_id": machine.id,
            "mqtt_host": "127.0.0.1",
            "mqtt_port": port,
            "mqtt_password": machine.secret,
            "command_key": machine.command_key,
            "sim_slots": {"A1": 5, "A2": 2},
            "motor_ms": 20,
            "drop_timeout_ms": 300,
            "resend_interval_s": 1,
            "backoff_min_ms": 100,
            "backoff_max_ms": 500,
        },
    )


def _journal_has_cash(flash: Path) -> bool:
    entries = json.loads((flash / "journal.json").read_text())["e"]
    return any(entry[1] == "c" for entry in entries)


async def test_captured_cash_replayed_after_ack_and_after_a_database_restore(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    site = Site(tmp_path / "gw", creds)
    m1 = creds["M1"]
    flash = tmp_path / "flash-M1"
    backup = tmp_path / "backup.db"
    async with Sniffer(upstream=0) as sniffer:
        await _capture_and_restore(site, m1, flash, backup, sniffer)


async def _capture_and_restore(
    site: Site, m1: MachineCreds, flash: Path, backup: Path, sniffer: Sniffer
) -> None:
    async with site.running() as gateway:
        sniffer.upstream = gateway.mqtt_port
        _install(flash, m1, sniffer.port)
        async with VirtualDevice(flash) as device:
            await device.wait_online(timeout=20)

            async def online() -> bool:
                return (await gateway.store.device_counts())["online"] == 1

            await wait_for(online)
            site.snapshot(backup)  # the nightly backup, taken before the customer pays

            order_id = await site.cash_order()
            await device.sim("coin", amount=2000)

            async def completed() -> bool:
                return await site.order_status(order_id) == "completed"

            await wait_for(completed, within=30)

            async def cash_acked() -> bool:
                return not _journal_has_cash(flash)

            await wait_for(cash_acked)
        captured = sniffer.published("M1", topics.CASH_CREDIT)
        assert captured, "the sniffer saw the firmware's cash credit"
        credit_id = json.loads(json.loads(captured[0])["body"])["id"]
        settled = await site.money_rows()
        assert [c["id"] for c in settled["credits"]] == [credit_id]

        # Replayed with the leaked password while the gateway has it: a resend, nothing more.
        async with attacker(gateway.mqtt_port, m1) as evil:
            for payload in captured:
                await evil.publish(topics.CASH_CREDIT, payload)
            await evil.acked(credit_id)
        assert await site.money_rows() == settled
        assert site.refused("replay") == 0

    # The database is restored from the backup: it has never heard of this credit.
    site.restore(backup)
    assert sidecar_path(site.db_path).stat().st_mode & 0o777 == 0o600
    async with site.running(load=False) as gateway:
        assert (await site.money_rows())["credits"] == []
        async with attacker(gateway.mqtt_port, m1) as evil:
            for payload in captured:
                await evil.publish(topics.CASH_CREDIT, payload)

            async def refused() -> bool:
                return site.refused("replay") == len(captured)

            await wait_for(refused)
            assert evil.acks == []
        assert (await site.money_rows())["credits"] == []
        assert await gateway.store.machine_credit("M1", "INR") == 0

        # The genuine device is not locked out: its next credit counts.
        sniffer.upstream = gateway.mqtt_port
        async with VirtualDevice(flash) as device:
            await device.wait_online(timeout=20)
            await device.sim("coin", amount=500)

            async def credited() -> bool:
                return await gateway.store.machine_credit("M1", "INR") == 500

            await wait_for(credited, within=30)
        credits = (await site.money_rows())["credits"]
        assert [c["id"] for c in credits] != [credit_id] and len(credits) == 1


def _credit(amount: int) -> dict[str, object]:
    return {"id": os.urandom(16).hex(), "amount": amount, "currency": "INR", "ts": int(time.time())}


async def test_a_delayed_genuine_event_counts_once_and_old_seqs_do_not(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    site = Site(tmp_path / "gw", creds)
    m1 = creds["M1"]
    base = 10**15
    late, early = _credit(300), _credit(700)
    late_msg = signed(m1, base + 1, late)
    async with site.running() as gateway, attacker(gateway.mqtt_port, m1) as device:
        # what the device sent after the credit it is still resending arrives first
        await device.publish(topics.INVENTORY, signed(m1, base + 2, {"slots": {"A1": 5}, "ts": 1}))
        await device.publish(topics.CASH_CREDIT, signed(m1, base + 3, early))
        await device.publish(topics.INVENTORY, signed(m1, base + 4, {"slots": {"A1": 4}, "ts": 2}))
        await device.acked(str(early["id"]))
        await device.publish(topics.CASH_CREDIT, late_msg)
        await device.acked(str(late["id"]))
        assert await gateway.store.machine_credit("M1", "INR") == 1000

        # its resend (same bytes, same seq) is a duplicate: acked again, counted once
        await device.publish(topics.CASH_CREDIT, late_msg)

        async def acked_twice() -> bool:
            return device.acks.count(str(late["id"])) == 2

        await wait_for(acked_twice)
        assert await gateway.store.machine_credit("M1", "INR") == 1000

        # another event under a seq already accepted, and one below the window: replays
        await device.publish(topics.CASH_CREDIT, signed(m1, base + 1, _credit(5000)))
        await device.publish(topics.CASH_CREDIT, signed(m1, base + 4 - WINDOW, _credit(5000)))

        async def refused() -> bool:
            return site.refused("replay") == 2

        await wait_for(refused)
        # the oldest seq still inside the window was never used: it counts
        edge = _credit(1)
        await device.publish(topics.CASH_CREDIT, signed(m1, base + 5 - WINDOW, edge))
        await device.acked(str(edge["id"]))
        assert await gateway.store.machine_credit("M1", "INR") == 1001
        assert site.refused("bad_signature") + site.refused("unsigned") == 0

    # After a restart the accepted seqs are still known (SQLite): a resend changes nothing.
    async with site.running(load=False) as gateway, attacker(gateway.mqtt_port, m1) as device:
        await device.publish(topics.CASH_CREDIT, late_msg)
        await device.acked(str(late["id"]))
        await device.publish(topics.CASH_CREDIT, signed(m1, base + 2, _credit(5000)))

        async def refused_again() -> bool:
            return site.refused("replay") == 1

        await wait_for(refused_again)
        assert await gateway.store.machine_credit("M1", "INR") == 1001


async def test_a_new_key_starts_a_new_sequence_and_the_old_key_is_dead(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    """The cloud re-credentials a stolen machine: what the old secret signs is refused from then
    on, and the re-flashed device (new secret, journal counting from scratch) is not taken for a
    replay of the old one."""
    site = Site(tmp_path / "gw", creds)
    old = creds["M1"]
    fresh = MachineCreds.new("M1")
    async with site.running() as gateway:
        async with attacker(gateway.mqtt_port, old) as device:
            first = _credit(100)
            await device.publish(topics.CASH_CREDIT, signed(old, 10**15, first))
            await device.acked(str(first["id"]))
        await gateway.store.apply_state(
            StateResponse(
                cursor=2, machines=[make_machine("M1", fresh, stock={"A1": 5}, version=2)]
            )
        )
        async with attacker(gateway.mqtt_port, fresh) as device:
            await device.publish(topics.CASH_CREDIT, signed(old, 10**15 + 1, _credit(5000)))

            async def refused() -> bool:
                return site.refused("bad_signature") == 1

            await wait_for(refused)
            second = _credit(200)
            await device.publish(topics.CASH_CREDIT, signed(fresh, 1, second))
            await device.acked(str(second["id"]))
        assert await gateway.store.machine_credit("M1", "INR") == 300


async def test_an_unreadable_sidecar_does_not_stop_the_gateway(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    """The database's own marks still hold; the sidecar is written again from them."""
    site = Site(tmp_path / "gw", creds)
    m1 = creds["M1"]
    async with site.running() as gateway, attacker(gateway.mqtt_port, m1) as device:
        credit = _credit(100)
        message = signed(m1, 10**15, credit)
        await device.publish(topics.CASH_CREDIT, message)
        await device.acked(str(credit["id"]))
    sidecar = sidecar_path(site.db_path)
    sidecar.write_text("{not json")
    async with site.running(load=False) as gateway, attacker(gateway.mqtt_port, m1) as device:
        rewritten = json.loads(sidecar.read_text())
        assert list(rewritten["machines"]["M1"].values()) == [10**15]
        assert sidecar.stat().st_mode & 0o777 == 0o600
        await device.publish(topics.CASH_CREDIT, signed(m1, 10**15 - WINDOW, _credit(5000)))

        async def refused() -> bool:
            return site.refused("replay") == 1

        await wait_for(refused)
        assert await gateway.store.machine_credit("M1", "INR") == 100
