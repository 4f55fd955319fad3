"""Fixtures for the virtual board tests: boards behind a pty, the real mpremote, a broker."""

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from amqtt.broker import Broker
from vesp_support import Mpremote

from tools.virtual_esp32 import VirtualDevice

MPREMOTE_TIMEOUT_S = 30.0


@pytest.fixture
def mpremote() -> Mpremote:
    # Asynchronous on purpose: the board's supervisor runs in this event loop and must keep
    # bridging the pty while mpremote talks to it.
    async def run(port: str, *args: str, resume: bool = True) -> str:
        argv = [sys.executable, "-m", "mpremote", "connect", port]
        argv += ["resume", *args] if resume else list(args)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            async with asyncio.timeout(MPREMOTE_TIMEOUT_S):
                out, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode == 0, f"mpremote {args} failed: {out!r} {err!r}"
        return out.decode()

    return run


@pytest.fixture
async def blank_board(tmp_path: Path) -> AsyncIterator[VirtualDevice]:
    """A started virtual board on an erased flash: it sits at the REPL."""
    board = VirtualDevice(VirtualDevice.erase(tmp_path / "flash"), serial=True)
    await board.start()
    try:
        yield board
    finally:
        await board.close()


@pytest.fixture
async def broker_port() -> AsyncIterator[int]:
    """An anonymous amqtt broker on an ephemeral loopback port."""
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
