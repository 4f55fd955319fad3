"""A local Razorpay test server: the QR code, payment and refund APIs and signed webhooks that
the cloud's Razorpay adapter uses, following Razorpay's documented shapes, with test controls
to pay QR codes, inject faults and make webhooks misbehave. See docs/razorpay-test-server.md."""

from tools.razorpay_server.entities import Account
from tools.razorpay_server.errors import (
    ApiError,
    ControlError,
    RazorpayServerError,
    ServerStartError,
)
from tools.razorpay_server.server import RazorpayTestServer
from tools.razorpay_server.webhooks import Delivery, sign

__all__ = [
    "Account",
    "ApiError",
    "ControlError",
    "Delivery",
    "RazorpayServerError",
    "RazorpayTestServer",
    "ServerStartError",
    "sign",
]
