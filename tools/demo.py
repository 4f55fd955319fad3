"""``make demo``: a whole site on this machine, set up the way a technician would.

It starts the cloud (SQLite) and a gateway (embedded amqtt) as their own processes, creates a demo
tenant with an admin, enrols the gateway with a one-time token, onboards two machines with
``vendctl machine onboard``, flashes two virtual ESP32s with ``vendctl device flash`` over the
real ``mpremote``, and waits until both machines are online at the gateway. Then it prints the
kiosk URL, the cloud URL and the admin credentials, writes them to ``<demo dir>/demo.json``, and
keeps everything running until Ctrl-C (SIGINT) or SIGTERM, when it stops every process it started.

Ports: the usual defaults (cloud 8080/8443, gateway 8000, broker 1883) when they are free, else
free ones chosen by the system. ``VENDING_DEMO_DIR`` (default ``var``) holds all demo state.
"""

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from provisioning.cloud_api import CloudApi
from tools.virtual_esp32 import VirtualDevice

ADMIN_EMAIL = "admin@demo.example"
SANDBOX_APPROVE_DELAY_S = "2"
MACHINES = (
    ("Lobby", "Ground floor lobby", "A1:Water:2000:10,A2:Cola:4000:8,B1:Chips:3000:6"),
    ("Canteen", "First floor canteen", "A1:Coffee:3500:12,A2:Juice:4500:6,B1:Chocolate:5000:5"),
)
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


class DemoError(Exception):
    """The demo could not be brought up; the message says which step failed."""


@dataclass
class Ports:
    cloud_api: int
    cloud_sync: int
    gateway_http: int
    mqtt: int


def _free_or_ephemeral(preferred: int) -> int:
    """``preferred`` if nothing listens there, else a port the system picks."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            pass
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def choose_ports() -> Ports:
    chosen: list[int] = []
    for preferred in (8080, 8443, 8000, 1883):
        port = _free_or_ephemeral(preferred)
        while port in chosen:
            port = _free_or_ephemeral(0)
        chosen.append(port)
    return Ports(*chosen)


def _bin(name: str) -> str:
    """A console script of this virtualenv (``vending-cloud``, ``vendctl``, ...)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise DemoError(f"{name} is not installed in {path.parent}; run make venv")
    return str(path)


async def _wait_until(
    what: str, probe: Callable[[], Awaitable[bool]], within: float = START_TIMEOUT_S
) -> None:
    """Poll ``probe`` (an HTTP check of another process: nothing to wait on but polling)."""
    deadline = time.monotonic() + within
    while not await probe():
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {within:.0f}s waiting for {what}")
        await asyncio.sleep(0.2)


async def _http_ok(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url) as response:
            return response.status == 200
    except (aiohttp.ClientError, OSError):
        return False


class Demo:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "demo"
        self.logs = self.state / "logs"
        self.ports = choose_ports()
        self.admin_password = secrets.token_urlsafe(12)
        self.cloud_url = f"http://127.0.0.1:{self.ports.cloud_api}"
        self.gateway_url = f"http://127.0.0.1:{self.ports.gateway_http}"
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.devices: list[tuple[str, str, VirtualDevice]] = []
        self._env = {**os.environ, "VENDCTL_CONFIG_DIR": str(self.state / "vendctl")}

    # --- processes -------------------------------------------------------------------------

    async def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        self.processes[name] = await asyncio.create_subprocess_exec(
            *argv,
            env={**self._env, **env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # our Ctrl-C handling stops it, in order
        )
        log.close()

    async def _run(self, what: str, argv: list[str], env: dict[str, str] | None = None) -> str:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env={**self._env, **(env or {})},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        text = out.decode(errors="replace")
        (self.logs / "commands.log").open("a").write(f"$ {' '.join(argv)}\n{text}\n")
        if proc.returncode != 0:
            last = text.strip().splitlines()[-1:] or ["(no output)"]
            raise DemoError(f"{what} failed (exit {proc.returncode}): {last[0]}")
        return text

    async def stop(self) -> None:
        for _name, _machine_id, device in reversed(self.devices):
            with contextlib.suppress(Exception):
                await device.__aexit__(None, None, None)
        self.devices.clear()
        # Gateway before cloud, so its last sync attempt meets a running cloud.
        for name in ("gateway", "cloud"):
            proc = self.processes.pop(name, None)
            if proc is None or proc.returncode is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()

    # --- steps -----------------------------------------------------------------------------

    def _cloud_env(self) -> dict[str, str]:
        cloud_dir = self.state / "cloud"
        return {
            "VENDING_CLOUD_DATABASE_URL": f"sqlite+aiosqlite:///{cloud_dir / 'cloud.db'}",
            "VENDING_CLOUD_DATA_DIR": str(cloud_dir),
            "VENDING_CLOUD_HTTP_PORT": str(self.ports.cloud_api),
            "VENDING_CLOUD_SYNC_PORT": str(self.ports.cloud_sync),
            "VENDING_CLOUD_SANDBOX_APPROVE_DELAY_S": SANDBOX_APPROVE_DELAY_S,
        }

    async def start_cloud(self, session: aiohttp.ClientSession) -> None:
        cloud = _bin("vending-cloud")
        env = self._cloud_env()
        await self._run(
            "creating the demo tenant",
            [cloud, "create-tenant", "--name", "Demo Vending", "--admin-email", ADMIN_EMAIL,
             "--admin-password", self.admin_password],
            env,
        )  # fmt: skip
        await self._spawn("cloud", [cloud, "serve"], env)
        await _wait_until(
            "the cloud API",
            lambda: _http_ok(session, f"{self.cloud_url}/api/v1/openapi.json"),
        )

    async def start_gateway(self, session: aiohttp.ClientSession, api: CloudApi) -> str:
        site = await api.create_site("Demo site", "Loopback street 1")
        token = await api.enrollment_token(site["id"])
        env = {
            "VENDING_GATEWAY_DATA_DIR": str(self.state / "gateway"),
            "VENDING_GATEWAY_HTTP_PORT": str(self.ports.gateway_http),
            "VENDING_GATEWAY_MQTT_PORT": str(self.ports.mqtt),
            "VENDING_GATEWAY_CLOUD_URL": self.cloud_url,
            "VENDING_GATEWAY_ENROLL_TOKEN": token,
            "VENDING_GATEWAY_GATEWAY_NAME": "demo-gateway",
            "VENDING_GATEWAY_SITE_NAME": "Demo site",
            "VENDING_GATEWAY_SYNC_PULL_INTERVAL_S": "2",
        }
        await self._spawn("gateway", [_bin("vending-gateway")], env)

        async def enrolled() -> bool:
            return any(g["site_id"] == site["id"] for g in await api.gateways())

        await _wait_until("the gateway", lambda: _http_ok(session, f"{self.gateway_url}/health"))
        await _wait_until("the gateway's enrolment", enrolled)
        return str(site["id"])

    async def onboard_and_flash(self, site_id: str) -> None:
        vendctl = _bin("vendctl")
        await self._run(
            "vendctl login",
            [vendctl, "login", "--cloud", self.cloud_url, "--email", ADMIN_EMAIL,
             "--password", self.admin_password],
        )  # fmt: skip
        bundles = self.state / "bundles"
        bundles.mkdir(parents=True, exist_ok=True)
        for name, location, slots in MACHINES:
            bundle = bundles / f"{name.lower()}.json"
            stock = {s.split(":")[0]: int(s.split(":")[3]) for s in slots.split(",")}
            await self._run(
                f"vendctl machine onboard {name}",
                [vendctl, "machine", "onboard", "--name", name, "--site", site_id,
                 "--location", location, "--slots", slots, "--mqtt-host", "127.0.0.1",
                 "--mqtt-port", str(self.ports.mqtt), "--out", str(bundle),
                 "--set", f"sim_slots={json.dumps(stock)}", "--set", "motor_ms=600"],
            )  # fmt: skip
            machine_id = json.loads(bundle.read_text())["machine_id"]
            flash_dir = VirtualDevice.erase(self.state / "devices" / name.lower())
            device = VirtualDevice(flash_dir, serial=True)
            await device.start()
            self.devices.append((name, machine_id, device))
            await self._run(
                f"vendctl device flash {name}",
                [vendctl, "device", "flash", "--port", str(device.serial_path), "--bundle",
                 str(bundle)],
            )  # fmt: skip
            await device.power_cycle()  # the technician's last step: power the machine on
            await device.wait_online(timeout=START_TIMEOUT_S)

    async def wait_machines_online(self, session: aiohttp.ClientSession) -> None:
        wanted = {machine_id for _, machine_id, _ in self.devices}

        async def online() -> bool:
            try:
                async with session.get(f"{self.gateway_url}/api/v1/machines") as response:
                    machines = (await response.json())["data"]
            except (aiohttp.ClientError, OSError, ValueError, KeyError):
                return False
            return wanted <= {m["id"] for m in machines if m["online"]}

        await _wait_until("both machines online at the gateway", online)

    def describe(self) -> dict[str, Any]:
        return {
            "kiosk_url": f"{self.gateway_url}/kiosk",
            "gateway_url": self.gateway_url,
            "cloud_url": self.cloud_url,
            "admin_email": ADMIN_EMAIL,
            "admin_password": self.admin_password,
            "mqtt_port": self.ports.mqtt,
            "machines": [
                {
                    "id": machine_id,
                    "name": name,
                    "kiosk_url": f"{self.gateway_url}/kiosk?machine={machine_id}",
                    "serial_port": device.serial_path,
                    "sim_port": device.port,
                }
                for name, machine_id, device in self.devices
            ],
            "pids": {
                **{name: proc.pid for name, proc in self.processes.items()},
                **{f"device:{name}": device.pid for name, _, device in self.devices},
            },
            "logs": str(self.logs),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    async def start(self) -> dict[str, Any]:
        """Bring the whole site up and write demo.json; the caller calls ``stop()`` in any case."""
        shutil.rmtree(self.state, ignore_errors=True)  # every demo starts from a clean site
        self.logs.mkdir(parents=True)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            print(f"demo: starting the cloud on {self.cloud_url}", flush=True)
            await self.start_cloud(session)
            async with CloudApi(self.cloud_url) as api:
                await api.login(ADMIN_EMAIL, self.admin_password)
                print(f"demo: starting the gateway on {self.gateway_url}", flush=True)
                site_id = await self.start_gateway(session, api)
            print("demo: onboarding and flashing two virtual ESP32s", flush=True)
            await self.onboard_and_flash(site_id)
            await self.wait_machines_online(session)
        info = self.describe()
        fd = os.open(self.root / "demo.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(info, fh, indent=2)
        return info


def _announce(info: dict[str, Any], path: Path) -> None:
    lines = [
        "",
        "  Demo site is up.",
        f"  Kiosk:     {info['kiosk_url']}",
        f"  Gateway:   {info['gateway_url']}  (health: {info['gateway_url']}/health)",
        f"  Cloud API: {info['cloud_url']}/api/v1  (OpenAPI: /api/v1/openapi.json)",
        f"  Admin:     {info['admin_email']} / {info['admin_password']}",
    ]
    for machine in info["machines"]:
        lines.append(
            f"  Machine {machine['name']}: {machine['id']} on {machine['serial_port']}, "
            f'coins: echo \'{{"op":"coin","amount":1000}}\' | nc 127.0.0.1 '
            f"{machine['sim_port']}"
        )
    lines += [f"  Details:   {path}", f"  Logs:      {info['logs']}", "  Ctrl-C stops it.", ""]
    print("\n".join(lines), flush=True)


async def _main(root: Path) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    demo = Demo(root)
    try:
        bring_up = asyncio.create_task(demo.start(), name="demo-start")
        stopped = asyncio.create_task(stop.wait(), name="demo-stop-signal")
        await asyncio.wait({bring_up, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not bring_up.done():  # Ctrl-C while starting
            bring_up.cancel()
            with contextlib.suppress(asyncio.CancelledError, DemoError):
                await bring_up
            return 130
        stopped.cancel()
        try:
            info = bring_up.result()
        except DemoError as exc:
            print(f"demo: error: {exc} (logs in {demo.logs})", file=sys.stderr, flush=True)
            return 1
        _announce(info, root / "demo.json")
        await stop.wait()
        print("demo: stopping", flush=True)
        return 0
    finally:
        await demo.stop()
        print("demo: stopped", flush=True)


def main() -> int:
    root = Path(os.environ.get("VENDING_DEMO_DIR", "var")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_main(root))


if __name__ == "__main__":
    sys.exit(main())
