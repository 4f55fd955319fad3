"""A customer at the kiosk asks for the sandbox, the provider that captures every payment by
itself. On a cloud where it is off (the default), that must get them nothing: the cloud refuses
the payment, the gateway stops offering the method and refuses it at once, the motor never runs.
Real cloud, gateway and firmware; UPI through the Razorpay test server still sells."""

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from e2e_money import money_site
from polling import wait_for

from cloud.db import schema as t
from contracts.sync import PaymentCreate
from edge.errors import CloudRefusedRequest
from tools.razorpay_server import RazorpayTestServer


async def test_a_sandbox_order_gets_nothing_where_the_cloud_runs_no_sandbox(
    tmp_path: Path, rzp: RazorpayTestServer
) -> None:
    overrides = {"sandbox_payments": False}
    async with money_site(tmp_path, rzp, machines=("Lobby",), cloud_overrides=overrides) as money:
        [lobby] = money.machines
        assert lobby.device is not None

        sandbox = (await money.methods(lobby))["sandbox"]
        assert (sandbox["available"], sandbox["reason"]) == (False, "not_enabled")

        status, envelope = await money.create_order(lobby, {"A1": 1}, "sandbox")
        assert status == 503, envelope
        assert envelope["error"]["code"] == "payment_unavailable"
        assert "Nothing was charged" in envelope["error"]["message"]

        # Past the gateway's own check (a gateway from before, or a call made with a site's
        # certificate): the cloud refuses it too, and makes no payment.
        link = money.site.gateway.cloud
        assert link is not None
        request = PaymentCreate(
            order_id=str(uuid.uuid4()),
            machine_id=lobby.id,
            amount=2000,
            currency="INR",
            method="sandbox",
            idempotency_key=f"attack-{uuid.uuid4().hex}",
        )
        with pytest.raises(CloudRefusedRequest) as refused:
            await link.create_payment(request)
        assert (refused.value.status, refused.value.code) == (409, "provider_not_configured")
        async with money.site.cloud.engine.connect() as conn:
            made = await conn.scalar(
                sa.select(sa.func.count())
                .select_from(t.payments)
                .where(t.payments.c.provider == "sandbox")
            )
        assert made == 0

        # UPI still sells, and the only motor run is the one that was paid for.
        order = await money.upi_order(lobby, {"A1": 1})
        money.rzp.pay(order["payment"]["qr_code_id"])

        async def done() -> bool:
            return (await money.site.kiosk_order(order["id"]))["status"] == "completed"

        await wait_for(done, within=30)
        assert lobby.device.motor_runs() == 1
