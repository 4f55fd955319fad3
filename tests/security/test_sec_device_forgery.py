"""Attack 4, second half: with a machine's leaked MQTT password, a forged ``events/cash`` on
the machine's own topic paid an order, because the gateway trusted anything a device's MQTT
identity published. Now cash credits, dispense results and inventory counts must be signed
with the key derived from the machine's secret (which the MQTT password does not give), for
the machine of the topic; anything else is refused, changes nothing, is not acked and is
counted. Real gateway, real amqtt broker, real SQLite store.
"""

import hashlib
import hmac
import json
import os
import time
from pathlib import Path

from sec_device_support import DeviceDouble, Site, attacker, creds, signed, wait_for
from standalone_site import MachineCreds

from contracts import topics
from contracts.signing import down_key, sign_device_message

__all__ = ["creds"]


def _credit(amount: int = 2000) -> dict[str, object]:
    return {"id": os.urandom(16).hex(), "amount": amount, "currency": "INR", "ts": int(time.time())}


async def test_forged_cash_with_the_machines_own_password_pays_nothing(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    site = Site(tmp_path / "gw", creds)
    m1 = creds["M1"]
    async with site.running() as gateway, attacker(gateway.mqtt_port, m1) as evil:
        order_id = await site.cash_order()
        before = await site.money_rows()
        secret = bytes.fromhex(m1.command_key)
        forged = {
            # the attack of the issue: plain JSON, as devices used to send it
            "unsigned": json.dumps(_credit()).encode(),
            # an envelope whose signature is made with what an attacker might try as the key
            "mqtt_password": sign_device_message(m1.secret.encode(), "M1", 10**15, _credit()),
            "zero_sig": json.dumps(
                {"v": 1, "body": json.dumps(_credit() | {"mid": "M1", "seq": 1}), "sig": "0" * 64}
            ).encode(),
            # signed with the gateway->device key: valid for commands, not for device messages
            "other_direction": sign_device_message(down_key(secret), "M1", 10**15, _credit()),
            # signed with the machine secret itself instead of the derived key
            "bare_secret": sign_device_message(secret, "M1", 10**15, _credit()),
        }
        for payload in forged.values():
            await evil.publish(topics.CASH_CREDIT, payload)

        async def all_refused() -> bool:
            return site.refused("unsigned") + site.refused("bad_signature") == len(forged)

        await wait_for(all_refused)
        assert site.refused("unsigned") == 1
        assert site.refused("bad_signature") == 4
        assert await site.money_rows() == before  # no credit, no payment, nothing to sync
        # a genuinely signed credit after them is acked: the forged ones were handled first
        marker = _credit(500)
        await evil.publish(topics.CASH_CREDIT, signed(m1, 10**15 + 1, marker))
        await evil.acked(str(marker["id"]))
        assert evil.acks == [marker["id"]]  # no forged one was acked
        after = await site.money_rows()
        assert [c["id"] for c in after["credits"]] == [marker["id"]]
        assert after["orders"] == [
            {"id": order_id, "status": "awaiting_payment", "paid_amount": 500}
        ]
        assert await site.order_status(order_id) == "awaiting_payment"


async def test_a_message_signed_by_another_machine_is_refused(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    """Machine A's signed credit published on machine B's topic with B's credentials: B's key
    does not verify it. Signed with B's key but naming A (two machines given one key by
    mistake, or A's key leaked to B's owner): the body's machine is not the topic's."""
    site = Site(tmp_path / "gw", creds)
    m1, m2 = creds["M1"], creds["M2"]
    async with site.running() as gateway, attacker(gateway.mqtt_port, m2) as evil:
        order_id = await site.cash_order(machine_id="M2")
        await evil.publish(topics.CASH_CREDIT, signed(m1, 10**15, _credit()))
        await evil.publish(topics.CASH_CREDIT, signed(m2, 10**15 + 1, _credit(), mid="M1"))

        async def refused() -> bool:
            return site.refused("bad_signature") == 1 and site.refused("wrong_machine") == 1

        await wait_for(refused)
        marker = _credit(100)
        await evil.publish(topics.CASH_CREDIT, signed(m2, 10**15 + 2, marker))
        await evil.acked(str(marker["id"]))
        assert evil.acks == [marker["id"]]
        rows = await site.money_rows()
        assert [(c["id"], c["amount"]) for c in rows["credits"]] == [(marker["id"], 100)]
        assert await site.order_status(order_id) == "awaiting_payment"


async def test_forged_dispense_results_and_stock_counts_are_refused(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    """A paid order's command is in flight. Forged results through the machine's own MQTT
    session ("failed" to trigger a refund, "ok" for a command the gateway never sent, or for
    the real one) and a forged stock count change nothing; the genuine result still lands."""
    site = Site(tmp_path / "gw", creds)
    m1 = creds["M1"]
    wrong_key = hashlib.sha256(b"guess").digest()
    # the device is slow to answer: the order stays dispensing while the forgeries arrive
    async with (
        site.running(dispense_give_up_s=60.0, dispense_command_ttl_s=50) as gateway,
        DeviceDouble(m1.id, m1.secret, m1.command_key, gateway.mqtt_port, silent=True) as dev,
    ):
        order_id = await site.cash_order()
        await dev.insert_coin(2000)

        async def command_sent() -> bool:
            return bool(dev.received)

        await wait_for(command_sent)
        command = dev.received[0]
        cmd = json.loads(json.loads(command)["body"])
        last_seen = (await site.query("SELECT last_seen FROM machines WHERE id = 'M1'"))[0]
        before = await site.money_rows()

        def result(outcome: str, cmd_id: str) -> dict[str, object]:
            return {
                "id": cmd_id, "cmd_id": cmd_id, "order_id": cmd["order_id"],
                "item_id": cmd["item_id"], "slot": cmd["slot"], "result": outcome,
                "reason": "jam" if outcome == "failed" else None, "ts": int(time.time()),
            }  # fmt: skip

        refund_me = result("failed", cmd["cmd_id"])
        forged = [
            (topics.DISPENSE_RESULT, json.dumps(refund_me).encode()),
            (topics.DISPENSE_RESULT, sign_device_message(wrong_key, "M1", 10**16, refund_me)),
            (
                topics.DISPENSE_RESULT,
                sign_device_message(wrong_key, "M1", 10**16 + 1, result("ok", "f" * 32)),
            ),
            (
                topics.DISPENSE_RESULT,
                sign_device_message(wrong_key, "M1", 10**16 + 2, result("ok", cmd["cmd_id"])),
            ),
            (topics.INVENTORY, json.dumps({"slots": {"A1": 0}, "ts": 1}).encode()),
            (
                topics.INVENTORY,
                sign_device_message(wrong_key, "M1", 10**16 + 3, {"slots": {"A1": 0}, "ts": 1}),
            ),
        ]
        for suffix, payload in forged:
            await dev.publish_raw(suffix, payload)

        async def all_refused() -> bool:
            return site.refused("unsigned") + site.refused("bad_signature") == len(forged)

        await wait_for(all_refused)
        assert (site.refused("unsigned"), site.refused("bad_signature")) == (2, 4)
        assert await site.money_rows() == before
        assert await site.order_status(order_id) == "dispensing"
        assert await gateway.store.command_result(cmd["cmd_id"]) is None
        now_seen = (await site.query("SELECT last_seen FROM machines WHERE id = 'M1'"))[0]
        assert now_seen == last_seen
        assert not set(dev.acked) & {refund_me["id"], "f" * 32}

        await dev.answer_late(command, "ok")  # the genuine, signed answer

        async def completed() -> bool:
            return await site.order_status(order_id) == "completed"

        await wait_for(completed)
    assert dev.motor_runs == []  # silent double: only the late answer, no second motor run


def test_the_forgery_keys_differ_from_the_genuine_one(creds: dict[str, MachineCreds]) -> None:
    """Guards the tests above: none of the attacker's keys is the real device key."""
    secret = bytes.fromhex(creds["M1"].command_key)
    genuine = hmac.new(secret, b"vend/v1/device-to-gateway", hashlib.sha256).digest()
    for key in (secret, down_key(secret), creds["M1"].secret.encode()):
        assert key != genuine
