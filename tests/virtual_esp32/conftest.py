"""Fixtures for the virtual board tests: boards behind a pty, the real mpremote, a broker."""

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from brokers import anonymous_amqtt
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
    async with anonymous_amqtt() as port:
        yield port
