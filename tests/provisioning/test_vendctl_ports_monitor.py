"""vendctl ports and device monitor (against a real pseudo-terminal)."""

import asyncio
import os
import signal
import sys

from provisioning.cli import main
from provisioning.serial_ports import PortInfo


def test_ports_runs(capsys):
    assert main(["ports"]) == 0
    assert capsys.readouterr().out.strip()


def test_bridges_are_marked_by_vid_pid():
    def port(vid, pid):
        return PortInfo("/dev/ttyUSB0", "", vid, pid, None)

    assert port(0x10C4, 0xEA60).bridge == "CP210x"
    assert port(0x1A86, 0x7523).bridge == "CH340"
    assert port(0x1A86, 0x55D4).bridge == "CH9102"
    assert all(port(0x0403, pid).bridge for pid in (0x6001, 0x6010, 0x6014, 0x6015))
    assert port(0x303A, 0x1001).bridge and port(0x303A, 0x0002).bridge
    assert port(0x1234, 0x5678).bridge is None and port(None, None).bridge is None
    assert port(0x10C4, 0xEA60).usb_id == "10C4:EA60"


class Lines:
    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.seen = ""
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(1024):
            self.seen += chunk.decode(errors="replace")
            self.changed.set()

    async def wait_for(self, text: str, limit_s: float = 10) -> None:
        async with asyncio.timeout(limit_s):
            while text not in self.seen:
                self.changed.clear()
                await self.changed.wait()


async def _pty_at(path: str, limit_s: float = 10) -> int:
    """A new pty master whose slave is ``path`` again (Linux reuses the lowest free index)."""
    async with asyncio.timeout(limit_s):
        while True:
            master, slave = os.openpty()
            name = os.ttyname(slave)
            os.close(slave)
            if name == path:
                return master
            os.close(master)
            await asyncio.sleep(0.05)


async def test_monitor_prints_reconnects_and_exits_0_on_ctrl_c():
    master, slave = os.openpty()
    path = os.ttyname(slave)
    os.close(slave)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "provisioning",
        "device",
        "monitor",
        "--port",
        path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    try:
        await err.wait_for("--- monitoring")
        os.write(master, b"BOOT m-1 0.1.0 1\r\n")
        await out.wait_for("BOOT m-1 0.1.0 1")

        os.close(master)  # the board goes away
        master = -1
        await err.wait_for("reconnecting")
        master = await _pty_at(path)
        await err.wait_for("back")
        os.write(master, b"READY heap_free 40800\r\n")
        await out.wait_for("READY heap_free 40800")

        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
        await asyncio.gather(out.task, err.task)
        assert "Traceback" not in err.seen
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if master >= 0:
            os.close(master)
