"""``vending-gateway``: run one site's gateway until SIGINT or SIGTERM."""

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from pydantic import ValidationError

from contracts.sealing import SealingError
from edge import dead_letters_cli, slots_cli
from edge.app import Gateway
from edge.errors import GatewayError
from edge.settings import GatewaySettings
from edge.store import GatewayStore

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


async def _rekey(settings: GatewaySettings) -> None:
    async with GatewayStore(settings) as store:
        report = await store.rekey()
    print(
        f"re-sealed under master key {settings.key_ring().active!r}: "
        f"{report.command_keys} command keys, {report.phones} phone numbers, "
        f"{report.outbox_events} outbox events"
        + (
            f"; keys no longer used: {', '.join(report.retired_keys)}"
            if report.retired_keys
            else ""
        )
    )


def rekey_main(argv: list[str]) -> int:
    """``vending-gateway rekey``: re-seal the database's secrets under the active master key."""
    parser = argparse.ArgumentParser(
        prog="vending-gateway rekey",
        description="Re-seal command keys and phone numbers under the first (active) master key; "
        "afterwards the older keys may be removed from the settings.",
    )
    parser.add_argument("--config", type=Path, help="TOML or JSON settings file")
    args = parser.parse_args(argv)
    try:
        settings = GatewaySettings.load(args.config)
    except ValidationError as exc:
        print(f"invalid settings:\n{exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_rekey(settings))
    except (GatewayError, SealingError) as exc:
        print(f"rekey failed: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words[:1] == ["rekey"]:
        return rekey_main(words[1:])
    if words[:1] == ["dead-letters"]:
        return dead_letters_cli.main(words[1:])
    if words[:1] == ["slots"]:
        return slots_cli.main(words[1:])
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
