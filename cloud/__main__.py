"""``vending-cloud``: serve, migrate, create-tenant."""

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from pydantic import ValidationError

from cloud.auth.passwords import Passwords
from cloud.bootstrap import create_tenant_with_admin
from cloud.db.engine import create_engine
from cloud.db.migrate import upgrade
from cloud.errors import CloudError
from cloud.server import CloudServer
from cloud.settings import CloudSettings
from cloud.storage import prepare_storage


async def _serve(settings: CloudSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with CloudServer(settings) as server:
        print(f"cloud API {server.api_url}  sync {server.sync_url}", flush=True)
        await stop.wait()


async def _migrate(settings: CloudSettings) -> None:
    prepare_storage(settings)
    engine = create_engine(settings.database_url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


async def _create_tenant(settings: CloudSettings, args: argparse.Namespace) -> None:
    prepare_storage(settings)
    engine = create_engine(settings.database_url)
    try:
        await upgrade(engine)
        tenant_id = await create_tenant_with_admin(
            engine,
            args.name,
            args.admin_email,
            args.admin_password,
            passwords=Passwords.from_settings(settings),
        )
    finally:
        await engine.dispose()
    print(tenant_id)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vending-cloud")
    parser.add_argument("--config", type=Path, help="settings file (KEY=value lines)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the API and sync listeners")
    sub.add_parser("migrate", help="apply database migrations")
    tenant = sub.add_parser("create-tenant", help="create a tenant and its admin user")
    tenant.add_argument("--name", required=True)
    tenant.add_argument("--admin-email", required=True)
    tenant.add_argument("--admin-password", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = CloudSettings.from_file(args.config)
    except ValidationError as exc:
        print(f"invalid settings: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "serve":
            asyncio.run(_serve(settings))
        elif args.command == "migrate":
            asyncio.run(_migrate(settings))
        else:
            asyncio.run(_create_tenant(settings, args))
    except CloudError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
