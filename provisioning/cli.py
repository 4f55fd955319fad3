"""``vendctl``: the technician's command line. Each command is a function ``(args) -> int``;
``main`` is the one place where a ``ProvisioningError`` becomes one line on stderr and its exit
code (argparse's own usage errors exit 2)."""

import argparse
import asyncio
import getpass
import json
import os
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console

from provisioning import claims
from provisioning.bundle import (
    BUNDLE_KEYS,
    DEFAULT_MQTT_HOST,
    DEFAULT_MQTT_PORT,
    build_bundle,
    read_bundle,
    validate_bundle,
    write_bundle,
)
from provisioning.claim_qr import render_qr
from provisioning.cloud_api import CloudApi
from provisioning.config_store import ConfigStore, StoredLogin, config_dir
from provisioning.errors import (
    BundleError,
    ClaimError,
    CloudApiError,
    InvalidInput,
    NotLoggedIn,
    ProvisioningError,
)
from provisioning.flash import (
    CHIP_OFFSETS,
    DEFAULT_BAUD,
    FIRMWARE_DIR,
    Flasher,
    FlashOptions,
    dry_run_commands,
    dry_run_notes,
)
from provisioning.serial_ports import check_port, is_virtual, list_serial_ports
from provisioning.session import logged_in
from provisioning.slots_template import parse_slots
from provisioning.tool_runner import show

PASSWORD_ENV = "VENDCTL_PASSWORD"
WIFI_PASSWORD_ENV = "VENDCTL_WIFI_PASSWORD"
CLAIM_TTL_DEFAULT_S = 900
CLAIM_TTL_MAX_S = 3600
Command = Callable[[argparse.Namespace], int]


# No markup: names, paths and cloud messages are printed as given, brackets and all.
def _out() -> Console:
    return Console(highlight=False, soft_wrap=True, markup=False)


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


def _cloud_url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"not a cloud URL: {text!r} (expected http(s)://host[:port])")
    return text.strip().rstrip("/")


# --- login -------------------------------------------------------------------------------------


def _read_password(args: argparse.Namespace) -> str:
    """``--password`` (visible in ``ps`` to every local user: for throwaway setups only), else
    ``$VENDCTL_PASSWORD``, else a prompt on a terminal, else the first line of stdin."""
    if args.password is not None:
        return str(args.password)
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env:
        return from_env
    if sys.stdin is not None and not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    return getpass.getpass(f"password for {args.email}: ")


def cmd_login(args: argparse.Namespace) -> int:
    cloud_url = _cloud_url(args.cloud)
    password = _read_password(args)
    if not password:
        raise InvalidInput("empty password")

    async def login() -> dict[str, Any]:
        async with CloudApi(cloud_url) as api:
            return await api.login(args.email, password)

    tokens = asyncio.run(login())
    store = ConfigStore()
    store.save(
        StoredLogin(
            cloud_url=cloud_url,
            email=args.email,
            access_token=tokens["access_token"],
            refresh_token=tokens["refresh_token"],
        )
    )
    _out().print(f"logged in to {cloud_url} as {args.email} (saved in {store.login_path})")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    store = ConfigStore()
    try:
        login = store.load()
    except NotLoggedIn:
        _out().print("not logged in")
        return 0

    async def revoke() -> None:
        async with CloudApi(login.cloud_url) as api:
            await api.logout(login.refresh_token)

    try:
        asyncio.run(revoke())
    except CloudApiError as exc:
        # The local copy goes regardless: a dead or unreachable session must not keep it.
        _err().print(f"note: the cloud did not confirm the logout ({exc})")
    store.clear()
    _out().print("logged out")
    return 0


def cmd_sites(args: argparse.Namespace) -> int:
    async def sites() -> list[dict[str, Any]]:
        async with logged_in(ConfigStore()) as (api, _login):
            return await api.sites()

    console = _out()
    for site in asyncio.run(sites()):
        console.print(f"{site['id']}  {site['name']}")
    return 0


# --- machine onboard ----------------------------------------------------------------------------


def _check_out_path(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InvalidInput(f"cannot write the bundle: directory {parent} does not exist")
    if path.is_dir():
        raise InvalidInput(f"--out {path} is a directory")


def _device_settings(pairs: Sequence[str]) -> dict[str, Any]:
    """``--set KEY=VALUE``: extra firmware settings (pin map, simulator stock); VALUE is JSON
    when it parses as JSON, else a string."""
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise InvalidInput(f"--set {pair!r}: expected KEY=VALUE, e.g. drop_pin=34")
        if key in BUNDLE_KEYS:
            raise InvalidInput(f"--set {key}: set by onboarding or its own option")
        try:
            settings[key] = json.loads(raw)
        except ValueError:
            settings[key] = raw
    return settings


def cmd_onboard(args: argparse.Namespace) -> int:
    catalog = parse_slots(args.slots) if args.slots is not None else []
    extra_settings = _device_settings(args.set or [])
    if args.wifi_password is None and args.wifi_ssid:
        args.wifi_password = os.environ.get(WIFI_PASSWORD_ENV)
    if bool(args.wifi_ssid) != bool(args.wifi_password is not None):
        raise InvalidInput(
            f"give --wifi-ssid with the Wi-Fi password (${WIFI_PASSWORD_ENV}, or --wifi-password)"
        )
    if not 60 <= args.claim_ttl <= CLAIM_TTL_MAX_S:
        raise InvalidInput(f"--claim-ttl must be between 60 and {CLAIM_TTL_MAX_S} seconds")
    if not 1 <= args.mqtt_port <= 65535:
        raise InvalidInput("--mqtt-port must be between 1 and 65535")
    out_path = Path(args.out) if args.out else None
    # Checked before onboarding: the credentials are shown once and must land somewhere.
    _check_out_path(out_path or Path("machine.bundle.json"))

    async def onboard() -> tuple[dict[str, Any], Path, dict[str, Any] | None, str | None]:
        async with logged_in(ConfigStore()) as (api, login):
            result = await api.onboard_machine(
                name=args.name, site_id=args.site, location=args.location, catalog=catalog
            )
            credentials = result["credentials"]
            machine_id = credentials["machine_id"]
            bundle = (
                build_bundle(
                    credentials,
                    cloud_url=login.cloud_url,
                    mqtt_host=args.mqtt_host,
                    mqtt_port=args.mqtt_port,
                    wifi_ssid=args.wifi_ssid or "",
                    wifi_password=args.wifi_password or "",
                )
                | extra_settings
            )
            path = out_path or Path(f"{machine_id}.bundle.json")
            try:
                write_bundle(path, bundle)
            except BundleError as exc:
                raise BundleError(
                    f"machine {machine_id} was onboarded but its bundle was not saved ({exc}); "
                    f"issue new credentials with POST /api/v1/machines/{machine_id}/"
                    "provision-device"
                ) from exc
            if args.no_claim:
                return bundle, path, None, None
            code = claims.new_code()
            sealed = claims.seal(bundle, code, machine_id)
            try:
                claim = await api.create_claim(
                    machine_id,
                    ciphertext=sealed.ciphertext,
                    nonce=sealed.nonce,
                    code_hash=claims.code_hash(code),
                    ttl_s=args.claim_ttl,
                )
            except CloudApiError as exc:
                raise ClaimError(
                    f"machine {machine_id} onboarded and its bundle written to {path}, "
                    f"but the claim code could not be created: {exc}"
                ) from exc
            return bundle, path, claim, code

    bundle, path, claim, code = asyncio.run(onboard())
    console = _out()
    console.print(f"onboarded machine {bundle['machine_id']} ({args.name})")
    console.print(f"device bundle written to {path} (mode 0600; it holds the device's secrets)")
    if args.mqtt_host == DEFAULT_MQTT_HOST and not args.mqtt_host_given:
        console.print(
            f"note: mqtt_host is {DEFAULT_MQTT_HOST} (a virtual device on this computer); pass "
            "--mqtt-host with the gateway's LAN address for a real board"
        )
    if claim is not None and code is not None:
        uri = claims.claim_uri(bundle["cloud_url"], code)
        expires = datetime.fromisoformat(claim["expires_at"]).strftime("%Y-%m-%d %H:%M:%S %Z")
        sys.stdout.write(render_qr(uri))
        console.print(f"claim code: {code}  (one use, expires {expires})")
        console.print(f"claim URI:  {uri}")
        console.print(f"flash with: vendctl device flash --port PORT --claim {code}")
    return 0


# --- claim --------------------------------------------------------------------------------------


def _claim_cloud(explicit: str | None, from_uri: str | None) -> str:
    if explicit:
        return _cloud_url(explicit)
    if from_uri:
        return _cloud_url(from_uri)
    try:
        return ConfigStore().load().cloud_url
    except NotLoggedIn as exc:
        raise InvalidInput("no cloud URL: pass --cloud URL (or run vendctl login)") from exc


async def redeem(cloud_url: str, code: str) -> dict[str, Any]:
    """Exchange a claim code for its device bundle (decrypted and validated)."""
    async with CloudApi(cloud_url) as api:
        try:
            answer = await api.redeem_claim(claims.code_hash(code))
        except CloudApiError as exc:
            if exc.status in (404, 410):
                raise ClaimError(f"claim code {claims.format_code(code)}: {exc}") from exc
            raise
    machine_id = answer.get("machine_id")
    if not isinstance(machine_id, str):
        raise ClaimError("the cloud's claim answer has no machine id")
    sealed = claims.SealedBundle(
        ciphertext=str(answer.get("ciphertext", "")), nonce=str(answer.get("nonce", ""))
    )
    bundle = claims.unseal(sealed, code, machine_id)
    if bundle.get("machine_id") != machine_id:
        raise ClaimError("the claimed bundle belongs to another machine")
    return validate_bundle(bundle, "claimed bundle")


def cmd_claim(args: argparse.Namespace) -> int:
    uri_cloud, code = claims.parse_claim(args.code)
    cloud_url = _claim_cloud(args.cloud, uri_cloud)
    if args.out:
        _check_out_path(Path(args.out))
    bundle = asyncio.run(redeem(cloud_url, code))
    path = Path(args.out) if args.out else Path(f"{bundle['machine_id']}.bundle.json")
    write_bundle(path, bundle)
    _out().print(f"claimed machine {bundle['machine_id']}: bundle written to {path} (mode 0600)")
    return 0


# --- device flash / monitor ---------------------------------------------------------------------


def cmd_flash(args: argparse.Namespace) -> int:
    if args.baud <= 0:
        raise InvalidInput("--baud must be positive")
    image = Path(args.micropython_image) if args.micropython_image else None
    virtual = args.virtual or is_virtual(args.port)
    if image is not None and virtual:
        raise InvalidInput("--micropython-image makes no sense for a virtual device")
    options = FlashOptions(
        port=args.port,
        virtual=virtual,
        image=image,
        chip=args.chip,
        baud=args.baud,
        compile=not args.no_compile,
        firmware_dir=Path(args.firmware) if args.firmware else FIRMWARE_DIR,
    )
    claim: tuple[str | None, str] | None = None
    bundle: dict[str, Any] | None = None
    if args.claim:
        claim = claims.parse_claim(args.claim)
    else:
        bundle = read_bundle(Path(args.bundle))

    if args.dry_run:
        out = _out()
        if claim is not None:
            out.print("# dry run: the claim is not redeemed; config.json would hold its bundle")
        for note in dry_run_notes(options):
            out.print(f"# note: {note}")
        out.print("# files are staged in a private temporary directory, shown as STAGE")
        for argv in dry_run_commands(options):
            sys.stdout.write(f"$ {show(argv)}\n")
        if virtual:
            out.print("# virtual device: no reset (restart it through its supervisor)")
        return 0

    check_port(args.port)
    if claim is not None:
        cloud_url = _claim_cloud(args.cloud, claim[0])
        bundle = asyncio.run(redeem(cloud_url, claim[1]))
        # The claim is spent now: keep the bundle, privately, until the flash has verified,
        # so a failed flash can be retried; it holds the device's secrets.
        saved = _claimed_bundle_path(bundle["machine_id"])
        write_bundle(saved, bundle)
        _err().print(f"claimed; bundle kept in {saved} until the flash succeeds")
    assert bundle is not None
    asyncio.run(Flasher(options, bundle, _err()).run())
    if claim is not None:
        _claimed_bundle_path(bundle["machine_id"]).unlink(missing_ok=True)
    _out().print(f"flashed machine {bundle['machine_id']} on {args.port}")
    return 0


def _claimed_bundle_path(machine_id: str) -> Path:
    directory = config_dir() / "claimed"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    return directory / f"{machine_id}.bundle.json"


def cmd_monitor(args: argparse.Namespace) -> int:
    from provisioning.monitor import run_monitor

    if args.baud <= 0:
        raise InvalidInput("--baud must be positive")
    check_port(args.port)
    stop = threading.Event()
    try:
        run_monitor(args.port, args.baud, stop=stop)
    except KeyboardInterrupt:
        stop.set()
        sys.stderr.write("\n--- monitor closed ---\n")
    return 0


# --- gateway discover, ports --------------------------------------------------------------------


def cmd_discover(args: argparse.Namespace) -> int:
    from provisioning.discover import discover_gateways

    if not 0 < args.timeout <= 120:
        raise InvalidInput("--timeout must be between 0 and 120 seconds")
    err = _err()
    with err.status(f"browsing the LAN for {args.timeout:g} s ..."):
        found = asyncio.run(discover_gateways(args.timeout))
    out = _out()
    if not found:
        out.print("no gateways found")
        return 0
    for gw in found:
        props = " ".join(f"{k}={v}" for k, v in sorted(gw.properties.items()))
        out.print(f"{gw.name}  {', '.join(gw.endpoints) or '-'}  {props}")
    return 0


def cmd_ports(args: argparse.Namespace) -> int:
    out = _out()
    ports = list_serial_ports()
    if not ports:
        out.print("no serial ports found")
        return 0
    for p in ports:
        mark = f"  [ESP32? {p.bridge}]" if p.bridge else ""
        usb = f"  {p.usb_id}" if p.usb_id else ""
        out.print(f"{p.device}{usb}  {p.description}{mark}")
    return 0


# --- parser -------------------------------------------------------------------------------------


class _HostAction(argparse.Action):
    """Remembers that --mqtt-host was given, to warn about the default only when it was not."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        namespace.mqtt_host_given = True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vendctl", description="Technician tools: onboard, flash and watch vending machines."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("login", help="log in to a cloud and remember it")
    p.add_argument("--cloud", required=True, help="cloud API URL, e.g. https://cloud.example")
    p.add_argument("--email", required=True)
    p.add_argument(
        "--password",
        help=f"avoid (other users see it in ps): ${PASSWORD_ENV}, stdin or a prompt is used "
        "when left out",
    )
    p.set_defaults(func=cmd_login)

    p = sub.add_parser("logout", help="revoke the stored login and forget it")
    p.set_defaults(func=cmd_logout)

    site = sub.add_parser("site", help="sites of your tenant")
    site_sub = site.add_subparsers(dest="site_command", metavar="SUBCOMMAND")
    p = site_sub.add_parser("list", help="list sites (ids for machine onboard --site)")
    p.set_defaults(func=cmd_sites)

    machine = sub.add_parser("machine", help="machines")
    machine_sub = machine.add_subparsers(dest="machine_command", metavar="SUBCOMMAND")
    p = machine_sub.add_parser("onboard", help="create a machine, its device bundle and claim")
    p.add_argument("--name", required=True)
    p.add_argument("--site", required=True, help="site id (vendctl site list)")
    p.add_argument("--location")
    p.add_argument(
        "--slots", help="A1:Water:2000:10,A2:Chips:3000:5 (slot:name:paise:qty) or .json"
    )
    p.add_argument("--wifi-ssid")
    p.add_argument("--wifi-password", help=f"avoid (visible in ps): use ${WIFI_PASSWORD_ENV}")
    p.add_argument("--mqtt-host", default=DEFAULT_MQTT_HOST, action=_HostAction)
    p.add_argument("--mqtt-port", type=int, default=DEFAULT_MQTT_PORT)
    p.add_argument("--out", help="bundle file (default ./<machine_id>.bundle.json)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="extra firmware setting for config.json (JSON value), repeatable",
    )
    p.add_argument("--claim-ttl", type=int, default=CLAIM_TTL_DEFAULT_S, help="seconds, max 3600")
    p.add_argument("--no-claim", action="store_true", help="do not create a claim code")
    p.set_defaults(func=cmd_onboard, mqtt_host_given=False)

    p = sub.add_parser("claim", help="exchange a claim code for the device bundle (once)")
    p.add_argument("code", help="ABCD-EFGH-2345-6789 or a scanned vending-claim: URI")
    p.add_argument("--cloud", help="cloud URL (default: from the URI or your login)")
    p.add_argument("--out", help="bundle file (default ./<machine_id>.bundle.json)")
    p.set_defaults(func=cmd_claim)

    device = sub.add_parser("device", help="the ESP32 in a machine")
    device_sub = device.add_subparsers(dest="device_command", metavar="SUBCOMMAND")
    p = device_sub.add_parser("flash", help="put MicroPython, firmware and config on a device")
    p.add_argument("--port", required=True)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle", help="device bundle file from machine onboard")
    source.add_argument("--claim", help="claim code (or URI) to redeem for the bundle")
    p.add_argument("--cloud", help="cloud URL for --claim (default: from the URI or your login)")
    p.add_argument("--micropython-image", help="MicroPython .bin to write with esptool first")
    p.add_argument("--chip", choices=sorted(CHIP_OFFSETS), default="esp32")
    p.add_argument("--baud", type=int, default=DEFAULT_BAUD, help="esptool baud rate")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--no-compile", action="store_true", help="copy .py sources, skip mpy-cross")
    p.add_argument("--virtual", action="store_true", help="a virtual ESP32 (pty): always resume")
    p.add_argument("--firmware", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_flash)

    p = device_sub.add_parser("monitor", help="serial console, reconnecting")
    p.add_argument("--port", required=True)
    p.add_argument("--baud", type=int, default=115200)
    p.set_defaults(func=cmd_monitor)

    gateway = sub.add_parser("gateway", help="site gateways")
    gateway_sub = gateway.add_subparsers(dest="gateway_command", metavar="SUBCOMMAND")
    p = gateway_sub.add_parser("discover", help="find gateways on the LAN (mDNS)")
    p.add_argument("--timeout", type=float, default=3.0)
    p.set_defaults(func=cmd_discover)

    p = sub.add_parser("ports", help="list serial ports, marking ESP32 USB bridges")
    p.set_defaults(func=cmd_ports)

    for name, group in (("site", site), ("machine", machine), ("device", device)):
        group.set_defaults(func=_usage(group), group=name)
    gateway.set_defaults(func=_usage(gateway))
    parser.set_defaults(func=_usage(parser))
    return parser


def _usage(parser: argparse.ArgumentParser) -> Command:
    def show_usage(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show_usage


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else 2
    command: Command = args.func
    try:
        return int(command(args))
    except ProvisioningError as exc:
        sys.stderr.write(f"vendctl: error: {_one_line(exc)}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("vendctl: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
