"""``vending-gateway``: run one site's gateway until SIGINT or SIGTERM."""

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from pydantic import ValidationError

from edge.app import Gateway
from edge.errors import GatewayError
from edge.settings import GatewaySettings

log = logging.getLogger("edge")


async def _serve(settings: GatewaySettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Gateway(settings) as gateway:
        log.info("gateway up: kiosk %s, mqtt port %d", gateway.http_url, gateway.mqtt_port)
        await stop.wait()
    log.info("gateway stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vending-gateway", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML or JSON settings file")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("transitions", "amqtt"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        settings = GatewaySettings.load(args.config)
    except ValidationError as exc:
        print(f"invalid settings:\n{exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(settings))
    except GatewayError as exc:
        print(f"gateway failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
