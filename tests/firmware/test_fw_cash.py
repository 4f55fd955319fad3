"""Coin credit: a CashCredit event, journalled, re-sent until acked and not after."""

from fw_support import DeviceFactory, SigningGateway

from contracts import topics
from contracts.device_messages import CashCredit


async def test_coin_credit_is_resent_until_acked(
    gateway: SigningGateway, make_device: DeviceFactory
) -> None:
    async with make_device("VM1") as device:
        await device.wait_online()
        await device.sim("coin", amount=1000)
        first = await gateway.wait_message("VM1", topics.CASH_CREDIT, amount=1000)
        credit = CashCredit.model_validate_json(first.body)

        # not acked: it comes again (resend_interval_s is 1 in these tests)
        index = gateway.received.index(first)
        await gateway.wait_message("VM1", topics.CASH_CREDIT, id=credit.id, start=index + 1)
        await gateway.ack("VM1", [credit.id])

        # A second credit serves as the clock: once it has been re-sent a few times, several
        # resend rounds have passed, and the acked credit must not have been in any of them.
        await device.sim("coin", amount=500)
        second = await gateway.wait_message("VM1", topics.CASH_CREDIT, amount=500)
        second_id = CashCredit.model_validate_json(second.body).id
        await _wait_sends(gateway, second_id, 2)
        settled = len(gateway.events("VM1", topics.CASH_CREDIT, credit.id))
        await _wait_sends(gateway, second_id, 4)
        assert len(gateway.events("VM1", topics.CASH_CREDIT, credit.id)) == settled
        assert (await device.sim("state"))["coins_pending"] == 0


async def _wait_sends(gateway: SigningGateway, event_id: str, count: int) -> None:
    def enough(_m: object) -> bool:
        return len(gateway.events("VM1", topics.CASH_CREDIT, event_id)) >= count

    await gateway.wait_for(enough)
