"""The cloud's payment role (``PaymentsPort``) for gateway and kiosk tests of UPI: answers like
the cloud with a Razorpay UPI QR intent, or fails the ways the cloud can fail. The end-to-end
tests run the real cloud with the local Razorpay test server; here the port is replaced, as the
existing gateway payment tests do (``gw_support.PaymentsDouble``)."""

import asyncio
import itertools
from typing import Literal

from contracts.sync import MachineState, MoneyPolicy, PaymentCreate, PaymentIntent, StateResponse
from edge.app import Gateway
from edge.errors import CloudRefusedRequest, CloudUnavailable

Mode = Literal["ok", "down", "provider_unavailable", "hang", "refuse"]


class UpiPayments:
    """``mode``: ok (a QR intent); down (the cloud unreachable); provider_unavailable (the
    cloud's 503 while its own provider breaker is open); hang (never answers: the gateway's
    call timeout ends it); refuse (a 4xx: the cloud answered)."""

    def __init__(self, mode: Mode = "ok") -> None:
        self.mode: Mode = mode
        self.requests: list[PaymentCreate] = []
        self.calls = 0  # every call, answered or not
        self._ids = itertools.count(1)
        self._never = asyncio.Event()

    async def create_payment(self, request: PaymentCreate) -> PaymentIntent:
        self.calls += 1
        match self.mode:
            case "down":
                raise CloudUnavailable("POST /payments: connection refused")
            case "provider_unavailable":
                raise CloudUnavailable(
                    "POST /payments: HTTP 503 provider_unavailable: the payment provider is not "
                    "answering"
                )
            case "hang":
                await self._never.wait()
            case "refuse":
                raise CloudRefusedRequest(
                    "POST /payments: HTTP 409",
                    status=409,
                    code="provider_not_configured",
                    message="no payment provider",
                )
        self.requests.append(request)
        n = next(self._ids)
        return PaymentIntent(
            payment_id=f"pay_{n}",
            order_id=request.order_id,
            provider="razorpay" if request.method == "upi" else "sandbox",
            status="created",
            amount=request.amount,
            currency=request.currency,
            qr_payload=f"upi://pay?pa=vend@razorpay&am={request.amount / 100:.2f}&tr=qr_{n}",
            provider_ref=f"qr_test{n:06d}",
            image_url=f"https://rzp.io/i/qr{n}",
        )


def with_upi(machine: MachineState, enabled: bool = True) -> MachineState:
    return machine.model_copy(update={"money_policy": MoneyPolicy(upi_enabled=enabled)})


async def load_upi_site(
    gateway: Gateway,
    machines: list[MachineState],
    *,
    upi: dict[str, bool] | None = None,
) -> None:
    """Apply ``machines`` with UPI enabled (or per ``upi``: machine id -> enabled)."""
    upi = upi or {}
    await gateway.store.apply_state(
        StateResponse(cursor=1, machines=[with_upi(m, upi.get(m.id, True)) for m in machines])
    )
