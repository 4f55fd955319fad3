"""Fixtures for the gateway tests: a real gateway (SQLite, amqtt) on ephemeral ports."""

import asyncio
import getpass
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from gw_support import Mosquitto, gateway_settings, load_site
from polling import wait_for
from standalone_site import MachineCreds

from contracts.credentials import new_mqtt_secret
from edge.app import Gateway
from edge.broker.mosquitto import LISTENER_CONFIG, REQUIRED_CONFIG, render_acl


@pytest.fixture(scope="session")
def creds() -> dict[str, MachineCreds]:
    """Credentials for machines M1 and M2 (hashed once: PBKDF2 is deliberately slow)."""
    return {machine_id: MachineCreds.new(machine_id) for machine_id in ("M1", "M2")}


@pytest.fixture
async def gateway(tmp_path: Path, creds: dict[str, MachineCreds]) -> AsyncIterator[Gateway]:
    async with Gateway(gateway_settings(tmp_path / "gw")) as gw:
        await load_site(gw, creds)
        yield gw


@pytest.fixture
async def http(gateway: Gateway) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=gateway.http_url) as session:
        yield session


def _write_mosquitto_config(conf_dir: Path, users: dict[str, str]) -> int:
    conf_dir.mkdir()
    passwd = conf_dir / "passwd"
    passwd.touch(mode=0o600)
    for user, password in users.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
    (conf_dir / "acl").write_text(render_acl("gateway"))
    with socket.socket() as probe:  # mosquitto cannot report an ephemeral port, so pick one
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    # "user" keeps the privileges of whoever runs the tests, so it can read the 0600 files.
    (conf_dir / "mosquitto.conf").write_text(
        f"{REQUIRED_CONFIG}persistence false\n"
        f"user {getpass.getuser()}\npassword_file {passwd}\nacl_file {conf_dir / 'acl'}\n"
        f"listener {port} 127.0.0.1\n{LISTENER_CONFIG}"
    )
    return port


@pytest.fixture
async def mosquitto(tmp_path: Path, creds: dict[str, MachineCreds]) -> AsyncIterator[Mosquitto]:
    """A private Mosquitto on a free loopback port, with passwords and the generated ACL."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.access(binary, os.X_OK) or shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto is not installed (tools/services.py ensure)")
    conf_dir = tmp_path / "mosquitto"
    gateway_password = "gw-" + new_mqtt_secret()
    users = {"gateway": gateway_password} | {c.id: c.secret for c in creds.values()}
    port = await asyncio.to_thread(_write_mosquitto_config, conf_dir, users)
    proc = await asyncio.create_subprocess_exec(
        binary,
        "-c",
        str(conf_dir / "mosquitto.conf"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:

        async def accepting() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return False
            writer.close()
            return True

        await wait_for(accepting, within=10)
        yield Mosquitto(f"mqtt://127.0.0.1:{port}", gateway_password)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
