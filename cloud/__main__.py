"""``vending-cloud``: serve, migrate, create-tenant."""

import argparse
import asyncio
import contextlib
import getpass
import logging
import os
import signal
import sys
from pathlib import Path

from pydantic import ValidationError

from cloud.auth import keys
from cloud.auth.passwords import Passwords
from cloud.auth.retention import prune_auth_records
from cloud.bootstrap import create_tenant_with_admin
from cloud.db import sealed
from cloud.db.engine import create_engine
from cloud.db.migrate import upgrade
from cloud.errors import CloudError, ConfigurationError
from cloud.server import CloudServer
from cloud.settings import CloudSettings
from cloud.storage import prepare_storage
from contracts.sealing import SealingError

ADMIN_PASSWORD_ENV = "VENDING_CLOUD_ADMIN_PASSWORD"


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


async def _prune_auth(settings: CloudSettings, audit_days: int) -> None:
    prepare_storage(settings)
    engine = create_engine(settings.database_url)
    try:
        await upgrade(engine)
        pruned = await prune_auth_records(engine, settings, audit_days=audit_days)
    finally:
        await engine.dispose()
    print(
        f"dropped {pruned.refresh_tokens} refresh tokens, {pruned.sessions} sessions, "
        f"{pruned.throttle_rows} throttle rows, {pruned.audit_rows} audit rows"
    )


def _admin_password(args: argparse.Namespace) -> str:
    """From the option, else ``VENDING_CLOUD_ADMIN_PASSWORD``, else stdin (prompted on a
    terminal): a password on the command line is visible to every local user in ``ps``."""
    if args.admin_password:
        return str(args.admin_password)
    from_env = os.environ.get(ADMIN_PASSWORD_ENV)
    if from_env:
        return from_env
    if sys.stdin.isatty():
        return getpass.getpass(f"password for {args.admin_email}: ")
    return sys.stdin.readline().rstrip("\n")


async def _create_tenant(settings: CloudSettings, args: argparse.Namespace) -> None:
    password = _admin_password(args)
    if not password:
        raise ConfigurationError(f"no admin password: set {ADMIN_PASSWORD_ENV} or pass it on stdin")
    prepare_storage(settings)
    engine = create_engine(settings.database_url)
    try:
        await upgrade(engine)
        tenant_id = await create_tenant_with_admin(
            engine,
            args.name,
            args.admin_email,
            password,
            passwords=Passwords.from_settings(settings),
        )
    finally:
        await engine.dispose()
    print(tenant_id)


def _rotate_jwt_key(settings: CloudSettings, args: argparse.Namespace) -> None:
    # Prints key ids only: the secrets stay in the key file (0600).
    if args.prune:
        dropped = keys.prune(settings)
        print(f"dropped {', '.join(dropped) or 'nothing'}")
        return
    kid = keys.rotate(settings, stage=args.stage)
    state = "staged (verifies only)" if args.stage else "active (signing)"
    print(f"{kid} {state} in {settings.resolve_jwt_keys_file()}")


async def _rekey(settings: CloudSettings) -> None:
    """Re-seal command keys, phone numbers and payment provider secrets under the active master
    key (key ids only are printed, never a key)."""
    prepare_storage(settings)
    try:
        ring = settings.key_ring()
    except SealingError as exc:
        raise ConfigurationError(f"master keys: {exc}") from exc
    engine = create_engine(settings.database_url)
    try:
        await upgrade(engine)
        report = await sealed.rekey(sealed.with_keys(engine, ring))
    finally:
        await engine.dispose()
    retired = ", ".join(report.retired_keys)
    print(
        f"re-sealed under master key {ring.active!r}: {report.command_keys} command keys, "
        f"{report.phones} phone numbers, {report.events} synced order events, "
        f"{report.provider_secrets} payment provider secrets"
        + (f"; keys no longer used: {retired}" if retired else "")
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vending-cloud")
    parser.add_argument("--config", type=Path, help="settings file (KEY=value lines)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the API and sync listeners")
    sub.add_parser("migrate", help="apply database migrations")
    tenant = sub.add_parser("create-tenant", help="create a tenant and its admin user")
    tenant.add_argument("--name", required=True)
    tenant.add_argument("--admin-email", required=True)
    tenant.add_argument(
        "--admin-password",
        help=f"avoid: visible in ps; default ${ADMIN_PASSWORD_ENV}, else read from stdin",
    )
    sub.add_parser(
        "rekey",
        help="re-seal device keys, phone numbers and payment provider secrets under the first "
        "(active) master key",
    )
    rotate = sub.add_parser(
        "rotate-jwt-key",
        help="add a JWT signing key and sign with it; older keys verify until their tokens expire",
    )
    rotate.add_argument(
        "--stage",
        action="store_true",
        help="add the key for verifying only; the next rotate-jwt-key starts signing with it",
    )
    rotate.add_argument(
        "--prune", action="store_true", help="only drop retired keys whose tokens have expired"
    )
    prune = sub.add_parser(
        "prune-auth",
        help="drop expired refresh tokens and sessions, stale throttle rows, old login audit rows",
    )
    prune.add_argument("--audit-days", type=int, default=90, help="keep this many days of audit")
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
        elif args.command == "rekey":
            asyncio.run(_rekey(settings))
        elif args.command == "rotate-jwt-key":
            _rotate_jwt_key(settings, args)
        elif args.command == "prune-auth":
            asyncio.run(_prune_auth(settings, args.audit_days))
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
