"""Attack 2: refused CONNECTs carrying a machine's client id, about one a second, kept dropping
that machine's link until a paid order ended ``refund_pending``. Now the real firmware stays
connected through a storm of them and both a paid and a cash order complete."""

from pathlib import Path

import pytest
from gw_support import PaymentsDouble
from polling import wait_for
from sec_broker_support import (
    BROKERS,
    NOT_AUTHORIZED,
    BrokerKind,
    capture,
    create_order,
    creds,
    finished,
    firmware_m1,
    link_ups,
    refused_connect_storm,
    running_site,
)
from standalone_site import MachineCreds

__all__ = ["creds"]  # the session fixture, imported so pytest finds it


@pytest.mark.parametrize("broker", BROKERS)
async def test_refused_connect_storm_does_not_drop_the_firmware_during_vends(
    tmp_path: Path, creds: dict[str, MachineCreds], broker: BrokerKind
) -> None:
    payments = PaymentsDouble()
    async with (
        running_site(broker, tmp_path, creds, payments=payments) as site,
        firmware_m1(site, tmp_path / "flash-M1") as device,
    ):
        ups = link_ups(device)
        async with refused_connect_storm(site, creds, interval=0.2) as answers:

            async def more_attacks(n: int) -> bool:
                return len(answers) >= n

            # Each step waits for a few more refused CONNECTs, so they land mid-vend.
            await wait_for(lambda: more_attacks(3))
            paid = await create_order(site, "sandbox")
            await wait_for(lambda: more_attacks(6))
            await capture(site, paid, 2000)
            assert await finished(site, paid["id"]) == "completed"

            cash = await create_order(site, "cash")
            so_far = len(answers)
            await wait_for(lambda: more_attacks(so_far + 3))
            await device.sim("coin", amount=2000)
            assert await finished(site, cash["id"]) == "completed"
        assert link_ups(device) == ups, "the firmware's link dropped during the storm"
        assert device.motor_runs() == 2
    if broker == "amqtt":
        assert set(answers) == {NOT_AUTHORIZED}
        refused = site.metric("gateway_mqtt_connects_refused_total", {"reason": "credentials"})
        # the storm's last CONNECT may have been cancelled before its answer was read
        assert len(answers) <= refused <= len(answers) + 1
