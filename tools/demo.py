"""``make demo``: a whole site on this machine, set up the way a technician would.

It starts the local Razorpay test server (``tools.razorpay_server``), the cloud (SQLite, its
Razorpay adapter pointed at that server) and a gateway (embedded amqtt) as their own processes,
creates a demo tenant with an admin, gives the tenant demo Razorpay credentials (set through the
cloud's API, and the same account registered on the test server with the cloud's webhook URL),
enrols the gateway with a one-time token, onboards two machines with ``vendctl machine
onboard``, flashes two virtual ESP32s with ``vendctl device flash`` over the real ``mpremote``,
and waits until both machines are online at the gateway and offer UPI. Then it prints the kiosk
URL, the cloud URL, the admin credentials and how to pay a UPI QR code (the test server's page
``{razorpay_url}/_test/`` or ``POST {razorpay_url}/_test/qr_codes/{qr_code_id}/pay``), writes
them to ``<demo dir>/demo.json`` (``razorpay_url`` is part of the contract), and keeps
everything running until Ctrl-C (SIGINT) or SIGTERM, when it stops every process it started.
So the kiosk's UPI button goes through the real adapter: QR codes, signed webhooks, refunds.

``python -m tools.demo coin --port SIM_PORT --amount 1000`` puts a coin into a running virtual
machine (its simulated HAL's control port; the announcement prints the command for each one).

Ports: each process binds the usual default (cloud 8080/8443, gateway 8000, broker 1883,
Razorpay test server 9090; or ``VENDING_DEMO_CLOUD_PORT``, ``..._SYNC_PORT``,
``..._GATEWAY_PORT``, ``..._MQTT_PORT``, ``..._RAZORPAY_PORT``) itself;
if that fails it is started again on ports the system picks (0), and the demo reads the ports it
really bound from its own output. No port is probed first, so nothing can take one between a
check and the bind, and the demo checks the listener it talks to belongs to the process it
started. ``VENDING_DEMO_DIR`` (default ``var``) holds all demo state.

One demo per demo directory: ``<demo dir>/demo.lock`` is held (flock) while a demo runs, and a
second one refuses to start, naming the first one's pid. ``demo.json`` is removed at stop.

Secrets: everything the demo creates is owner-only (umask 077, inherited by every process it
starts); the admin password reaches ``vending-cloud create-tenant`` and ``vendctl login`` through
their environment, never their command line, and recorded output is redacted. The demo's
Razorpay key secret and webhook secret are random per run, travel only in HTTP bodies to the two
loopback servers, and are neither printed nor written to ``demo.json``.
"""

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import string
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp

from provisioning.cloud_api import CloudApi
from provisioning.errors import CloudApiError
from tools.virtual_esp32 import SimControlError, VirtualDevice
from tools.virtual_esp32.device import sim_request

ADMIN_EMAIL = "admin@demo.example"
SANDBOX_APPROVE_DELAY_S = "2"
MACHINES = (
    ("Lobby", "Ground floor lobby", "A1:Water:2000:10,A2:Cola:4000:8,B1:Chips:3000:6"),
    ("Canteen", "First floor canteen", "A1:Coffee:3500:12,A2:Juice:4500:6,B1:Chocolate:5000:5"),
)
# The cloud's Razorpay adapter, tuned for a person watching: a webhook lost on the way is made
# up for by polling the QR code within seconds, and a refund the provider refused is retried
# soon (production keeps the settings' defaults).
CLOUD_RAZORPAY_ENV = {
    "VENDING_CLOUD_RAZORPAY_POLL_AFTER_S": "5",
    "VENDING_CLOUD_RAZORPAY_POLL_INTERVAL_S": "3",
    "VENDING_CLOUD_REFUND_BACKOFF_BASE_S": "2",
    "VENDING_CLOUD_REFUND_BACKOFF_MAX_S": "30",
    "VENDING_CLOUD_REFUND_CHECK_INTERVAL_S": "2",
    "VENDING_CLOUD_REFUND_CHECK_MAX_S": "30",
}
# The test server retries a webhook the cloud did not take after these many seconds (Razorpay
# itself spreads retries over 24 hours).
RAZORPAY_RETRY_DELAYS = "1,2,5,15,60"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
LOCK_NAME = "demo.lock"
INFO_NAME = "demo.json"
# What the processes print once their listeners are bound (cloud/__main__.py, edge/__main__.py).
CLOUD_READY = re.compile(r"^cloud API (http://\S+)  sync (https://\S+)$")
GATEWAY_READY = re.compile(r"gateway up: kiosk (http://\S+), mqtt port (\d+)$")
RAZORPAY_READY = re.compile(r"^razorpay test server on (http://\S+)$")
# The environment variables the child commands read the password from (never argv).
CLOUD_ADMIN_PASSWORD_ENV = "VENDING_CLOUD_ADMIN_PASSWORD"
VENDCTL_PASSWORD_ENV = "VENDCTL_PASSWORD"
REDACTED = "[redacted]"


class DemoError(Exception):
    """The demo could not be brought up; the message says which step failed."""


class DemoLocked(DemoError):
    """Another demo runs with the same demo directory."""


@dataclass(frozen=True)
class PreferredPorts:
    cloud_api: int
    cloud_sync: int
    gateway_http: int
    mqtt: int
    razorpay: int

    @classmethod
    def from_env(cls) -> "PreferredPorts":
        def port(name: str, default: int) -> int:
            text = os.environ.get(f"VENDING_DEMO_{name}_PORT", "")
            if not text:
                return default
            if not text.isdigit() or not 0 <= int(text) <= 65535:
                raise DemoError(f"VENDING_DEMO_{name}_PORT must be a port number, not {text!r}")
            return int(text)

        return cls(
            port("CLOUD", 8080),
            port("SYNC", 8443),
            port("GATEWAY", 8000),
            port("MQTT", 1883),
            port("RAZORPAY", 9090),
        )


class DemoLock:
    """``<demo dir>/demo.lock``, flock'ed for the demo's lifetime and holding its pid. The
    kernel drops the lock when the process dies, however it dies, so no stale lock remains."""

    def __init__(self, root: Path) -> None:
        self.path = root / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DemoLocked(
                f"another demo is running from {self.path.parent} (pid {holder}); "
                "stop it (Ctrl-C in its terminal) or set VENDING_DEMO_DIR to another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(fields[9])
    return inodes


def listener_belongs_to(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` holds a socket listening on ``port`` (Linux /proc); None when
    this cannot be known here."""
    if not Path("/proc/net/tcp").exists():
        return None
    inodes = _listening_inodes(port)
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return None
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:[") and target[len("socket:[") : -1] in inodes:
                return True
    return False


def redact(text: str, secrets_: Iterable[str]) -> str:
    for secret in secrets_:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def _alnum(n: int) -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(n))


@dataclass(frozen=True)
class RazorpayCredentials:
    """The demo tenant's Razorpay account, new every run, in Razorpay's formats (the cloud
    checks them: ``rzp_test_`` key id, alphanumeric key secret)."""

    key_id: str
    key_secret: str
    webhook_secret: str

    @classmethod
    def new(cls) -> "RazorpayCredentials":
        return cls(f"rzp_test_{_alnum(14)}", _alnum(32), f"whsec_{_alnum(32)}")


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
    def __init__(self, root: Path, ports: PreferredPorts | None = None) -> None:
        self.root = root
        self.state = root / "demo"
        self.logs = self.state / "logs"
        self.preferred = ports or PreferredPorts.from_env()
        self.admin_password = secrets.token_urlsafe(12)
        # Known once each process has printed what it bound.
        self.cloud_url = ""
        self.gateway_url = ""
        self.mqtt_port = 0
        self.razorpay_url = ""
        self.razorpay = RazorpayCredentials.new()
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.devices: list[tuple[str, str, VirtualDevice]] = []
        self._pumps: list[asyncio.Task[None]] = []
        # Every secret the demo learns, so no log it writes can hold one.
        self._secrets: set[str] = {
            self.admin_password,
            self.razorpay.key_secret,
            self.razorpay.webhook_secret,
        }
        self._env = {**os.environ, "VENDCTL_CONFIG_DIR": str(self.state / "vendctl")}

    def _redact(self, text: str) -> str:
        return redact(text, sorted(self._secrets, key=len, reverse=True))

    # --- processes -------------------------------------------------------------------------

    async def _pump(
        self,
        stream: asyncio.StreamReader,
        log: IO[bytes],
        ready: re.Pattern[str],
        found: asyncio.Future[re.Match[str] | None],
    ) -> None:
        """Copy a process's output into its log (redacted) and report its ready line."""
        try:
            while line := await stream.readline():
                text = line.decode(errors="replace")
                log.write(self._redact(text).encode())
                log.flush()
                match = ready.search(text.rstrip("\r\n"))
                if match and not found.done():
                    found.set_result(match)
        finally:
            log.close()
            if not found.done():
                found.set_result(None)

    async def _spawn(
        self, name: str, argv: list[str], env: dict[str, str], ready: re.Pattern[str]
    ) -> re.Match[str] | None:
        """Start a long-running process; its ready line, or None if it exited without one."""
        log = (self.logs / f"{name}.log").open("ab")
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env={**self._env, **env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # our Ctrl-C handling stops it, in order
        )
        self.processes[name] = proc
        found: asyncio.Future[re.Match[str] | None] = asyncio.get_running_loop().create_future()
        assert proc.stdout is not None
        self._pumps.append(
            asyncio.create_task(self._pump(proc.stdout, log, ready, found), name=f"{name}-log")
        )
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                match = await found
        except TimeoutError as exc:
            raise DemoError(f"timed out after {START_TIMEOUT_S:.0f}s waiting for {name}") from exc
        if match is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await proc.wait()
            self.processes.pop(name, None)
        return match

    async def _spawn_on_ports(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        ready: re.Pattern[str],
        preferred: dict[str, int],
    ) -> re.Match[str]:
        """The process on its preferred ports, else (it could not bind them) on ports the
        system picks: it binds them itself, so no other process can slip in between.
        ``preferred`` maps an environment variable, or a command-line option (``--port``), to
        its port."""
        attempts = (preferred, dict.fromkeys(preferred, 0))
        for ports in attempts:
            options = [f"{k}={v}" for k, v in ports.items() if k.startswith("--")]
            variables = {k: str(v) for k, v in ports.items() if not k.startswith("--")}
            match = await self._spawn(name, argv + options, env | variables, ready)
            if match is not None:
                return match
            wanted = ", ".join(str(port) for port in ports.values())
            print(f"demo: {name} did not start on {wanted}; trying free ports", flush=True)
        raise DemoError(f"{name} did not start (see {self.logs / (name + '.log')})")

    def _check_owner(self, name: str, url_or_port: str | int) -> None:
        """The listener the demo is about to talk to is the process it started (it read the
        port from that process's own output; this rules out any mix-up)."""
        port = url_or_port if isinstance(url_or_port, int) else _port_of(url_or_port)
        proc = self.processes[name]
        if listener_belongs_to(proc.pid, port) is False:
            raise DemoError(f"port {port} is not held by the {name} the demo started")

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
        with (self.logs / "commands.log").open("a") as log:
            log.write(self._redact(f"$ {' '.join(argv)}\n{text}\n"))
        if proc.returncode != 0:
            last = text.strip().splitlines()[-1:] or ["(no output)"]
            raise DemoError(f"{what} failed (exit {proc.returncode}): {self._redact(last[0])}")
        return text

    async def stop(self) -> None:
        for _name, _machine_id, device in reversed(self.devices):
            with contextlib.suppress(Exception):
                await device.__aexit__(None, None, None)
        self.devices.clear()
        # Gateway before cloud, so its last sync attempt meets a running cloud; the Razorpay
        # test server last, so the cloud's last provider calls meet it too.
        for name in ("gateway", "cloud", "razorpay"):
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
        pumps, self._pumps = self._pumps, []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await asyncio.gather(*pumps, return_exceptions=True)
        for task in pumps:
            task.cancel()

    # --- steps -----------------------------------------------------------------------------

    def _cloud_env(self) -> dict[str, str]:
        cloud_dir = self.state / "cloud"
        return {
            "VENDING_CLOUD_DATABASE_URL": f"sqlite+aiosqlite:///{cloud_dir / 'cloud.db'}",
            "VENDING_CLOUD_DATA_DIR": str(cloud_dir),
            "VENDING_CLOUD_SANDBOX_APPROVE_DELAY_S": SANDBOX_APPROVE_DELAY_S,
            "VENDING_CLOUD_RAZORPAY_API_URL": self.razorpay_url,
            **CLOUD_RAZORPAY_ENV,
        }

    async def start_razorpay(self, session: aiohttp.ClientSession) -> None:
        """The local Razorpay test server, before the cloud (whose adapter is pointed at it)."""
        ready = await self._spawn_on_ports(
            "razorpay",
            [sys.executable, "-m", "tools.razorpay_server", "--host", "127.0.0.1",
             "--retry-delays", RAZORPAY_RETRY_DELAYS],
            {},
            RAZORPAY_READY,
            {"--port": self.preferred.razorpay},
        )  # fmt: skip
        self.razorpay_url = ready.group(1)
        self._check_owner("razorpay", self.razorpay_url)
        await _wait_until(
            "the Razorpay test server",
            lambda: _http_ok(session, f"{self.razorpay_url}/_test/state"),
        )

    async def configure_razorpay(self, session: aiohttp.ClientSession, api: CloudApi) -> None:
        """The demo tenant pays through Razorpay: the account on the test server first (webhooks
        to the cloud's URL for this tenant), then the same credentials in the cloud, which
        from then on offers UPI to the tenant's gateways."""
        try:
            webhook_url = (await api.payment_provider())["webhook_url"]
        except CloudApiError as exc:
            raise DemoError(f"reading the tenant's payment settings failed: {exc}") from exc
        account = {
            "key_id": self.razorpay.key_id,
            "key_secret": self.razorpay.key_secret,
            "webhook_secret": self.razorpay.webhook_secret,
            "webhook_url": webhook_url,
        }
        try:
            async with session.post(
                f"{self.razorpay_url}/_test/accounts", json=account
            ) as response:
                if response.status != 200:
                    raise DemoError(
                        "the Razorpay test server refused the demo account: "
                        f"HTTP {response.status} {self._redact(await response.text())[:300]}"
                    )
        except (aiohttp.ClientError, OSError) as exc:
            raise DemoError(f"cannot reach the Razorpay test server: {exc}") from exc
        try:
            await api.set_payment_provider(
                "razorpay",
                self.razorpay.key_id,
                key_secret=self.razorpay.key_secret,
                webhook_secret=self.razorpay.webhook_secret,
            )
        except CloudApiError as exc:
            raise DemoError(
                f"setting the tenant's Razorpay credentials failed: {self._redact(str(exc))}"
            ) from exc

    async def start_cloud(self, session: aiohttp.ClientSession) -> None:
        cloud = _bin("vending-cloud")
        env = self._cloud_env()
        await self._run(
            "creating the demo tenant",
            [cloud, "create-tenant", "--name", "Demo Vending", "--admin-email", ADMIN_EMAIL],
            env | {CLOUD_ADMIN_PASSWORD_ENV: self.admin_password},
        )
        ready = await self._spawn_on_ports(
            "cloud",
            [cloud, "serve"],
            env,
            CLOUD_READY,
            {
                "VENDING_CLOUD_HTTP_PORT": self.preferred.cloud_api,
                "VENDING_CLOUD_SYNC_PORT": self.preferred.cloud_sync,
            },
        )
        self.cloud_url = ready.group(1)
        self._check_owner("cloud", self.cloud_url)
        await _wait_until(
            "the cloud API",
            lambda: _http_ok(session, f"{self.cloud_url}/api/v1/openapi.json"),
        )

    async def start_gateway(self, session: aiohttp.ClientSession, api: CloudApi) -> str:
        site = await api.create_site("Demo site", "Loopback street 1")
        token = await api.enrollment_token(site["id"])
        self._secrets.add(token)
        env = {
            "VENDING_GATEWAY_DATA_DIR": str(self.state / "gateway"),
            "VENDING_GATEWAY_CLOUD_URL": self.cloud_url,
            "VENDING_GATEWAY_ENROLL_TOKEN": token,
            "VENDING_GATEWAY_GATEWAY_NAME": "demo-gateway",
            "VENDING_GATEWAY_SITE_NAME": "Demo site",
            "VENDING_GATEWAY_SYNC_PULL_INTERVAL_S": "2",
        }
        # A retry on other ports finds the gateway already enrolled (its data directory keeps
        # the certificate), so the spent token is no problem.
        ready = await self._spawn_on_ports(
            "gateway",
            [_bin("vending-gateway")],
            env,
            GATEWAY_READY,
            {
                "VENDING_GATEWAY_HTTP_PORT": self.preferred.gateway_http,
                "VENDING_GATEWAY_MQTT_PORT": self.preferred.mqtt,
            },
        )
        self.gateway_url, self.mqtt_port = ready.group(1), int(ready.group(2))
        self._check_owner("gateway", self.gateway_url)
        self._check_owner("gateway", self.mqtt_port)

        async def enrolled() -> bool:
            return any(g["site_id"] == site["id"] for g in await api.gateways())

        await _wait_until("the gateway", lambda: _http_ok(session, f"{self.gateway_url}/health"))
        await _wait_until("the gateway's enrolment", enrolled)
        return str(site["id"])

    async def onboard_and_flash(self, site_id: str) -> None:
        vendctl = _bin("vendctl")
        await self._run(
            "vendctl login",
            [vendctl, "login", "--cloud", self.cloud_url, "--email", ADMIN_EMAIL],
            {VENDCTL_PASSWORD_ENV: self.admin_password},
        )
        bundles = self.state / "bundles"
        bundles.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name, location, slots in MACHINES:
            bundle = bundles / f"{name.lower()}.json"
            stock = {s.split(":")[0]: int(s.split(":")[3]) for s in slots.split(",")}
            await self._run(
                f"vendctl machine onboard {name}",
                [vendctl, "machine", "onboard", "--name", name, "--site", site_id,
                 "--location", location, "--slots", slots, "--mqtt-host", "127.0.0.1",
                 "--mqtt-port", str(self.mqtt_port), "--out", str(bundle),
                 "--set", f"sim_slots={json.dumps(stock)}", "--set", "motor_ms=600",
                 "--no-claim"],
            )  # fmt: skip
            written = json.loads(bundle.read_text())
            machine_id = written["machine_id"]
            self._secrets.update((written["mqtt_password"], written["command_key"]))
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
        """Both machines online at the gateway and selling by UPI there (the gateway pulled
        the tenant's money policy and its cloud link is up), so the kiosk shows the button."""
        wanted = {machine_id for _, machine_id, _ in self.devices}

        def upi_offered(machine: dict[str, Any]) -> bool:
            return any(m["method"] == "upi" and m["available"] for m in machine["payment_methods"])

        async def ready() -> bool:
            try:
                async with session.get(f"{self.gateway_url}/api/v1/machines") as response:
                    machines = (await response.json())["data"]
                return wanted <= {m["id"] for m in machines if m["online"] and upi_offered(m)}
            except (aiohttp.ClientError, OSError, ValueError, KeyError, TypeError):
                return False

        await _wait_until("both machines online at the gateway and offering UPI", ready)

    def describe(self) -> dict[str, Any]:
        return {
            "kiosk_url": f"{self.gateway_url}/kiosk",
            "gateway_url": self.gateway_url,
            "cloud_url": self.cloud_url,
            "razorpay_url": self.razorpay_url,
            "razorpay_key_id": self.razorpay.key_id,
            "admin_email": ADMIN_EMAIL,
            "admin_password": self.admin_password,
            "mqtt_port": self.mqtt_port,
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
        # Every demo starts from a clean site; the lock makes sure no running demo owns it.
        shutil.rmtree(self.state, ignore_errors=True)
        self.logs.mkdir(mode=0o700, parents=True)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            print("demo: starting the Razorpay test server", flush=True)
            await self.start_razorpay(session)
            print(f"demo: Razorpay test server up on {self.razorpay_url}", flush=True)
            print("demo: starting the cloud", flush=True)
            await self.start_cloud(session)
            print(f"demo: cloud up on {self.cloud_url}", flush=True)
            async with CloudApi(self.cloud_url) as api:
                await api.login(ADMIN_EMAIL, self.admin_password)
                await self.configure_razorpay(session, api)
                print(
                    f"demo: tenant pays by UPI through Razorpay key {self.razorpay.key_id} "
                    "(the test server)",
                    flush=True,
                )
                print("demo: starting the gateway", flush=True)
                site_id = await self.start_gateway(session, api)
                print(f"demo: gateway up on {self.gateway_url}", flush=True)
            print("demo: onboarding and flashing two virtual ESP32s", flush=True)
            await self.onboard_and_flash(site_id)
            await self.wait_machines_online(session)
        info = self.describe()
        fd = os.open(self.root / INFO_NAME, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(info, fh, indent=2)
        return info


def _python() -> str:
    """This virtualenv's Python as a person in this directory would type it."""
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        return str(exe.relative_to(Path.cwd()))
    return str(exe)


def _announce(info: dict[str, Any], path: Path) -> None:
    rzp = info["razorpay_url"]
    lines = [
        "",
        "  Demo site is up.",
        f"  Kiosk:     {info['kiosk_url']}",
        f"  Gateway:   {info['gateway_url']}  (health: {info['gateway_url']}/health)",
        f"  Cloud API: {info['cloud_url']}/api/v1  (OpenAPI: /api/v1/openapi.json)",
        # Only to a terminal: redirected output tends to end up in files others can read.
        f"  Admin:     {info['admin_email']} / "
        + (info["admin_password"] if sys.stdout.isatty() else f"(password in {path})"),
        f"  Razorpay:  {rzp}  (local test server: no real money moves)",
        "  Pay by UPI: press UPI on the kiosk, then pay the QR code it shows as a customer's",
        f"             phone would: open {rzp}/_test/ and press Pay, or run",
        f"             curl -X POST {rzp}/_test/qr_codes/<qr_code_id>/pay",
        "             (qr_code_id: on that page, and in the kiosk order's payment.qr_code_id)",
    ]
    for machine in info["machines"]:
        lines += [
            f"  Machine {machine['name']}: {machine['id']} on {machine['serial_port']}",
            f"             insert ₹10 in cash: {_python()} -m tools.demo coin "
            f"--port {machine['sim_port']} --amount 1000",
        ]
    lines += [f"  Details:   {path}", f"  Logs:      {info['logs']}", "  Ctrl-C stops it.", ""]
    print("\n".join(lines), flush=True)


async def insert_coin(sim_port: int, amount: int) -> dict[str, Any]:
    """Cash into a running virtual machine, as its coin acceptor would count it: one request
    to the simulated HAL's control port (docs/firmware.md, "Simulated HAL")."""
    try:
        return await sim_request(sim_port, "coin", amount=amount)
    except SimControlError as exc:
        raise DemoError(
            f"the machine on port {sim_port} took no coin ({exc}); nothing was inserted"
        ) from exc


async def _main(root: Path, ports: PreferredPorts) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    demo = Demo(root, ports)
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
        # Its URLs and password describe processes that no longer run.
        (root / INFO_NAME).unlink(missing_ok=True)
        print("demo: stopped", flush=True)


def private_root(root: Path) -> None:
    """The demo directory and everything the demo or its processes create in it: owner only
    (the umask is inherited by every process the demo starts)."""
    os.umask(0o077)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(root, 0o700)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.demo",
        description="Without a command: bring the demo site up (make demo) until Ctrl-C.",
    )
    commands = parser.add_subparsers(dest="command")
    coin = commands.add_parser(
        "coin", help="insert cash into a running demo machine (its sim_port is in demo.json)"
    )
    coin.add_argument("--port", type=int, required=True, help="the machine's sim_port")
    coin.add_argument("--amount", type=int, default=1000, help="in paise (default 1000 = ₹10)")
    args = parser.parse_args(argv)
    if args.command == "coin":
        if not 0 < args.port <= 65535:
            parser.error("--port must be a port number")
        if args.amount <= 0:
            parser.error("--amount must be a positive number of paise")
    return args


def coin_main(port: int, amount: int) -> int:
    try:
        asyncio.run(insert_coin(port, amount))
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr, flush=True)
        return 1
    # The machine counts it and reports it to the gateway: it pays the order waiting for cash
    # there, or stays on the machine as credit for the next one (no coin return).
    print(
        f"₹{amount / 100:.2f} in cash inserted into the machine on port {port}; it pays the "
        "cash order waiting there, or is kept as that machine's credit",
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.command == "coin":
        return coin_main(args.port, args.amount)
    root = Path(os.environ.get("VENDING_DEMO_DIR", "var")).resolve()
    private_root(root)
    lock = DemoLock(root)
    try:
        ports = PreferredPorts.from_env()
        lock.acquire()
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr, flush=True)
        return 1
    try:
        # Left by a demo that was killed outright (SIGKILL, power cut): not this one's.
        (root / INFO_NAME).unlink(missing_ok=True)
        return asyncio.run(_main(root, ports))
    finally:
        lock.release()


if __name__ == "__main__":
    sys.exit(main())
