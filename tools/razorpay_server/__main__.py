"""Run the Razorpay test server from a shell:

    python -m tools.razorpay_server --port 0 --account KEY_ID:KEY_SECRET:WEBHOOK_SECRET:WEBHOOK_URL

The first line on stdout is ``razorpay test server on http://HOST:PORT`` (scripts read the URL
from it). Runs until SIGINT or SIGTERM.
"""

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import signal
import sys

from tools.razorpay_server.entities import Account
from tools.razorpay_server.errors import RazorpayServerError
from tools.razorpay_server.server import RazorpayTestServer


def parse_account(text: str) -> Account:
    # The URL contains colons itself, so split off only the first three fields.
    parts = text.split(":", 3)
    if len(parts) < 3 or not all(parts[:3]):
        raise argparse.ArgumentTypeError("expected KEY_ID:KEY_SECRET:WEBHOOK_SECRET[:WEBHOOK_URL]")
    url = parts[3] if len(parts) == 4 and parts[3] else None
    return Account(key_id=parts[0], key_secret=parts[1], webhook_secret=parts[2], webhook_url=url)


def parse_delays(text: str) -> tuple[float, ...]:
    try:
        delays = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError("expected comma-separated seconds, e.g. 1,2,4") from exc
    if any(d < 0 for d in delays):
        raise argparse.ArgumentTypeError("delays must not be negative")
    return delays


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.razorpay_server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="bind address (default loopback: the /_test controls have no auth)",
    )
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument(
        "--account",
        type=parse_account,
        action="append",
        default=[],
        metavar="KEY_ID:KEY_SECRET:WEBHOOK_SECRET[:WEBHOOK_URL]",
    )
    p.add_argument("--public-url", help="base URL for image_url if not the bound address")
    p.add_argument(
        "--refund-delay",
        type=float,
        default=0.2,
        help="seconds before a refund is processed (negative: never on its own)",
    )
    p.add_argument(
        "--min-close-by",
        type=int,
        default=120,
        help="minimum seconds between now and close_by (Razorpay: 120)",
    )
    p.add_argument(
        "--retry-delays",
        type=parse_delays,
        default=None,
        help="webhook retry delays in seconds, comma-separated",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve(args: argparse.Namespace) -> None:
    kwargs = {}
    if args.retry_delays is not None:
        kwargs["webhook_retry_delays"] = args.retry_delays
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with RazorpayTestServer(
        args.host,
        args.port,
        accounts=args.account,
        public_url=args.public_url,
        refund_delay_s=args.refund_delay if args.refund_delay >= 0 else None,
        min_close_by_s=args.min_close_by,
        **kwargs,
    ) as server:
        print(f"razorpay test server on {server.url}", flush=True)
        if not is_loopback(server.host):
            print(
                "  warning: not bound to loopback; the /_test controls have no auth and anyone"
                " who can reach this port can pay QR codes and change its behaviour",
                file=sys.stderr,
                flush=True,
            )
        for account in args.account:
            print(f"  account {account.key_id} -> webhooks to {account.webhook_url}", flush=True)
        print(f"  pay QR codes at {server.url}/_test/", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        asyncio.run(serve(args))
    except RazorpayServerError as exc:
        print(f"razorpay test server: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
