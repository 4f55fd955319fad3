"""A signed command dispenses once, and every message the firmware sends validates against the
host-side contract models (contracts.device_messages); cash, dispense results and inventory come
signed (contracts.signing) with the key derived for the device -> gateway direction and a seq
that only grows."""

import pytest
from fw_support import BrokerInfo, DeviceFactory, SigningGateway, device_key, fetch_retained
from pydantic import BaseModel

from contracts import topics
from contracts.device_messages import (
    CashCredit,
    DeviceLog,
    DispenseResult,
    Health,
    Inventory,
    Presence,
)
from contracts.signing import (
    SIGNED_DEVICE_SUFFIXES,
    SignatureError,
    SignedEnvelope,
    down_key,
    up_key,
    verify_device_message,
)

MODELS: dict[str, type[BaseModel]] = {
    topics.PRESENCE: Presence,
    topics.HEALTH: Health,
    topics.INVENTORY: Inventory,
    topics.DISPENSE_RESULT: DispenseResult,
    topics.CASH_CREDIT: CashCredit,
    topics.LOGS: DeviceLog,
}


async def test_signed_command_dispenses_once_and_messages_validate(
    gateway: SigningGateway, make_device: DeviceFactory, broker: BrokerInfo
) -> None:
    device = make_device("VM1", health_interval_s=1)
    async with device:
        online = await gateway.wait_message("VM1", topics.PRESENCE, online=True)
        presence = Presence.model_validate_json(online.payload)
        assert presence.boot == 1 and presence.fw
        retained = await fetch_retained(broker, online.topic, "test-newcomer")
        assert retained.retain and Presence.model_validate_json(retained.payload).online

        first = await gateway.wait_message("VM1", topics.INVENTORY)
        assert Inventory.model_validate_json(first.body).slots == {"A1": 5, "A2": 5}

        cmd_id, payload = gateway.command("VM1", slot="A2")
        mark = len(gateway.received)
        await gateway.send("VM1", payload)
        msg = await gateway.wait_message("VM1", topics.DISPENSE_RESULT, id=cmd_id, start=mark)
        result = DispenseResult.model_validate_json(msg.body)
        assert (result.cmd_id, result.slot, result.result, result.order_id) == (
            cmd_id,
            "A2",
            "ok",
            "order-1",
        )
        inventory = await gateway.wait_message("VM1", topics.INVENTORY, start=mark)
        assert Inventory.model_validate_json(inventory.body).slots == {"A1": 5, "A2": 4}
        await gateway.ack("VM1", [cmd_id])

        await device.sim("coin", amount=1000)
        cash = await gateway.wait_message("VM1", topics.CASH_CREDIT, amount=1000)
        credit = CashCredit.model_validate_json(cash.body)
        assert credit.currency == "INR" and len(credit.id) == 32
        await gateway.ack("VM1", [credit.id])

        # one more health after the vend, so it reports a heap figure taken under load
        health_mark = len(gateway.received)
        await gateway.wait_message("VM1", topics.HEALTH, start=health_mark)

    assert device.motor_runs() == 1
    assert device.motor_runs(cmd_id) == 1
    seen = {m.suffix for m in gateway.received}
    assert seen >= set(MODELS), f"missing {set(MODELS) - seen}"
    by_seq: dict[int, bytes] = {}
    for m in gateway.received:
        MODELS[m.suffix].model_validate_json(m.body)
        if m.suffix in SIGNED_DEVICE_SUFFIXES:
            SignedEnvelope.model_validate_json(m.payload)
            header, _ = verify_device_message(up_key(device_key("VM1")), m.payload)
            assert header.mid == "VM1"
            # a resend repeats its seq with the very same bytes; nothing else shares a seq
            assert by_seq.setdefault(header.seq, m.payload) == m.payload
            # the other direction's key (and the bare secret) does not verify it
            for wrong in (down_key(device_key("VM1")), device_key("VM1")):
                with pytest.raises(SignatureError):
                    verify_device_message(wrong, m.payload)
    assert len(by_seq) >= 4  # two inventories, a result and a credit
    # the last will after the device stopped (SIGTERM: the broker saw the link drop)
    offline = await gateway.wait_message("VM1", topics.PRESENCE, online=False, start=mark)
    assert Presence.model_validate_json(offline.payload).online is False
