"""Brokers for tests: a plain MQTT broker rather than the gateway's own, and a private
Mosquitto set up as the gateway's external broker."""

import asyncio
import contextlib
import getpass
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from amqtt.broker import Broker
from polling import wait_for

from contracts.credentials import new_mqtt_secret
from edge.broker.mosquitto import LISTENER_CONFIG, REQUIRED_CONFIG, render_acl


@dataclass
class Mosquitto:
    url: str
    gateway_password: str


@contextlib.asynccontextmanager
async def anonymous_amqtt() -> AsyncIterator[int]:
    """An amqtt broker on an ephemeral loopback port that lets anyone in; yields the port."""
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }
    )
    await broker.start()
    try:
        server = broker._servers["default"].instance
        assert server is not None
        yield server.sockets[0].getsockname()[1]
    finally:
        await broker.shutdown()


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


@contextlib.asynccontextmanager
async def gateway_mosquitto(conf_dir: Path, devices: dict[str, str]) -> AsyncIterator[Mosquitto]:
    """A private Mosquitto on a free loopback port configured the way ``edge.broker.mosquitto``
    tells operators to (generated ACL, the device packet limit), with a password for each of
    ``devices`` (machine id -> secret) and one for the gateway; skips when not installed."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.access(binary, os.X_OK) or shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto is not installed (tools/services.py ensure)")
    gateway_password = "gw-" + new_mqtt_secret()
    users = {"gateway": gateway_password} | devices
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
