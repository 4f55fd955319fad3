"""Attacks 4 and 8 against ``make demo`` itself: secrets readable by other local users (files,
``ps``, logs), a port taken between the demo's check and its bind (the demo then logged in to
the wrong cloud), a second demo in the same checkout deleting the running one's files, and
``demo.json`` left behind after stop.

One demo runs for the whole module (bringing one up costs about a minute on this machine); the
tests run in file order and the last one stops it."""

import asyncio
import fcntl
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from polling import wait_for
from sec_secrets_support import CommandLineSampler, FakeCloud, free_port

from provisioning.cloud_api import CloudApi
from tools.demo import listener_belongs_to

ROOT = Path(__file__).resolve().parents[2]
DEMO_UP_S = 240.0


@dataclass
class RunningDemo:
    proc: subprocess.Popen[bytes]
    root: Path
    output: Path
    info: dict[str, Any]  # demo.json as parsed
    squatter: FakeCloud
    squatted_port: int
    sampler: CommandLineSampler
    commands: set[str] = field(default_factory=set)

    @property
    def state(self) -> Path:
        return self.root / "demo"

    def secrets(self) -> dict[str, str]:
        """Every secret the demo handles that an attacker on the machine would want."""
        found = {"admin password": str(self.info["admin_password"])}
        for bundle in sorted((self.state / "bundles").glob("*.json")):
            data = json.loads(bundle.read_text())
            found[f"{bundle.stem} mqtt password"] = data["mqtt_password"]
            found[f"{bundle.stem} command key"] = data["command_key"]
        login = json.loads((self.state / "vendctl" / "login.json").read_text())
        found["refresh token"] = login["refresh_token"]
        for keys in (self.state / "gateway" / "master_keys", self.state / "cloud" / "master_keys"):
            found[f"{keys.parent.name} master key"] = keys.read_text().split(":", 1)[1].strip()
        return found


def _wait_for(path: Path, proc: subprocess.Popen[bytes], within: float) -> None:
    async def appeared() -> bool:
        assert proc.poll() is None, f"the demo exited early with {proc.returncode}"
        return await asyncio.to_thread(path.exists)

    asyncio.run(wait_for(appeared, within=within, interval=0.01))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDemo]:
    tmp = tmp_path_factory.mktemp("secrets-demo")
    root = tmp / "var"
    cloud_port = free_port()
    env = {
        **os.environ,
        "VENDING_DEMO_DIR": str(root),
        "VENDING_DEMO_CLOUD_PORT": str(cloud_port),
        "VENDING_DEMO_SYNC_PORT": str(free_port()),
        "VENDING_DEMO_GATEWAY_PORT": str(free_port()),
        "VENDING_DEMO_MQTT_PORT": str(free_port()),
    }
    output = tmp / "make-demo.log"
    with output.open("wb") as log:
        proc = subprocess.Popen(
            ["make", "--no-print-directory", "demo"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    sampler = CommandLineSampler(proc.pid)
    sampler.start()
    squatter: FakeCloud | None = None
    try:
        # The old demo chose its ports when it started and bound them later: a process that
        # takes the cloud's port in between (here: as soon as the demo has set up its
        # directory) got the demo's login. Now the cloud binds the port itself.
        _wait_for(root / "demo" / "logs", proc, DEMO_UP_S)
        squatter = FakeCloud(cloud_port)
        _wait_for(root / "demo.json", proc, DEMO_UP_S)
        info = json.loads((root / "demo.json").read_text())
        yield RunningDemo(proc, root, output, info, squatter, cloud_port, sampler)
    finally:
        sampler.stop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=60)
        if squatter is not None:
            squatter.close()


def test_demo_talks_to_its_own_cloud_when_its_port_is_taken(demo: RunningDemo) -> None:
    cloud_url = str(demo.info["cloud_url"])
    port = int(cloud_url.rsplit(":", 1)[1])
    assert port != demo.squatted_port
    assert demo.squatter.requests == 0, "the demo talked to the process squatting its port"
    pids = dict(demo.info["pids"])
    assert listener_belongs_to(int(pids["cloud"]), port) is True

    async def login() -> None:
        async with CloudApi(cloud_url) as api:
            await api.login(str(demo.info["admin_email"]), str(demo.info["admin_password"]))
            assert len(await api.machines()) == 2

    asyncio.run(login())


def test_no_secret_on_any_command_line(demo: RunningDemo) -> None:
    """Every command line below ``make demo`` since it started (``ps`` shows them to every
    local user): the tenant creation and the login carried the admin password on theirs."""
    seen = set(demo.sampler.seen)
    assert any("create-tenant" in c for c in seen), "the sampler missed create-tenant"
    assert any(" login " in c for c in seen), "the sampler missed vendctl login"
    assert any("device flash" in c for c in seen)
    for what, secret in demo.secrets().items():
        leaking = [c for c in seen if secret in c]
        assert not leaking, f"{what} on a command line: {leaking[0][:200]}"


def test_no_secret_in_any_log(demo: RunningDemo) -> None:
    logs = [*sorted((demo.state / "logs").iterdir()), demo.output]
    assert any(p.name == "commands.log" for p in logs)
    for path in logs:
        text = path.read_text(errors="replace")
        for what, secret in demo.secrets().items():
            assert secret not in text, f"{what} in {path.name}"


def test_every_file_of_the_demo_is_private(demo: RunningDemo) -> None:
    """demo.json (admin password), bundles, the virtual ESP32s' flash (config.json), the
    gateway's and cloud's keys and databases, vendctl's login, the logs: 0600 in 0700."""
    checked = 0
    for path in [demo.root, *demo.root.rglob("*")]:
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            continue
        mode = path.stat().st_mode & 0o777
        assert mode & 0o077 == 0, f"{path.relative_to(demo.root)} is {oct(mode)}"
        checked += 1
    flash_config = demo.state / "devices" / "lobby" / "config.json"
    assert flash_config.stat().st_mode & 0o777 == 0o600
    assert (demo.root / "demo.json").stat().st_mode & 0o777 == 0o600
    assert checked > 50


def test_second_demo_refuses_and_leaves_the_first_alone(demo: RunningDemo) -> None:
    holder = int((demo.root / "demo.lock").read_text())
    before = {p.name for p in demo.state.iterdir()}
    second = subprocess.run(
        [sys.executable, "-m", "tools.demo"],
        cwd=ROOT,
        env={**os.environ, "VENDING_DEMO_DIR": str(demo.root)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 1
    message = second.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert f"another demo is running from {demo.root} (pid {holder})" in message
    assert {p.name for p in demo.state.iterdir()} == before
    assert (demo.root / "demo.json").exists()
    assert demo.proc.poll() is None
    pids = dict(demo.info["pids"])
    for name in ("cloud", "gateway"):
        os.kill(int(pids[name]), 0)  # still running


def test_ctrl_c_removes_demo_json_and_frees_the_lock(demo: RunningDemo) -> None:
    os.killpg(demo.proc.pid, signal.SIGINT)
    demo.proc.wait(timeout=60)
    assert not (demo.root / "demo.json").exists()
    fd = os.open(demo.root / "demo.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no demo holds it any more
    finally:
        os.close(fd)
