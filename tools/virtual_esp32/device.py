"""VirtualDevice: one MicroPython unix-port process running the firmware from a flash dir."""

import asyncio
import contextlib
import json
import re
import signal
from pathlib import Path
from types import TracebackType
from typing import Self

from tools.virtual_esp32.errors import (
    DeviceStartError,
    OutputTimeoutError,
    SimControlError,
)
from tools.virtual_esp32.flash import install, venv_tool

_STOP_GRACE_S = 3.0
_SIM_TIMEOUT_S = 5.0
_MOTOR_LINE = re.compile(r"^SIM_MOTOR (\S+) (\S+)$")
_SIM_PORT_LINE = r"^SIM_PORT (\d+)$"


class VirtualDevice:
    """Async context manager around the firmware process; ``__aexit__`` stops it.

    Output lines (stdout and stderr of every boot) are kept in ``output_lines``; markers the
    firmware prints: ``SIM_PORT``, ``BOOT``, ``READY heap_free``, ``LINK up|ready|down``, ``LOG``,
    ``EVENTS acked <n> pending <m>``,
    ``SIM_MOTOR <slot> <cmd_id>``, ``SIM_HOLD motor <cmd_id>``.
    """

    def __init__(self, flash_dir: Path, *, heapsize: str = "96K", precompile: bool = True) -> None:
        self.flash_dir = flash_dir
        self.heapsize = heapsize
        self.precompile = precompile
        self._lines: list[str] = []
        self._new_line = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self.port: int | None = None
        self.boot_line = 0  # index in output_lines where the current boot's output starts

    @staticmethod
    def install(flash_dir: Path, config: dict[str, object], *, precompile: bool = True) -> None:
        install(flash_dir, config, precompile=precompile)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def output_lines(self) -> list[str]:
        return list(self._lines)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def _pump(self, stream: asyncio.StreamReader) -> None:
        while True:
            raw = await stream.readline()
            if not raw:
                return
            self._lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
            self._new_line.set()

    # `timeout` parameters are this harness's published interface (callers pass seconds).
    async def start(self, timeout: float = 15) -> None:  # noqa: ASYNC109
        if self.running:
            raise DeviceStartError("already running")
        self.boot_line = len(self._lines)
        self.port = None
        self._proc = await asyncio.create_subprocess_exec(
            venv_tool("micropython"),
            "-X",
            f"heapsize={self.heapsize}",
            "-c",
            "import boot\nimport main\n",
            cwd=self.flash_dir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._pumps = [
            asyncio.create_task(self._pump(self._proc.stdout), name="vdev-stdout"),
            asyncio.create_task(self._pump(self._proc.stderr), name="vdev-stderr"),
        ]
        try:
            match = await self.wait_output(_SIM_PORT_LINE, timeout, self.boot_line)
        except OutputTimeoutError as exc:
            tail = "\n".join(self._lines[self.boot_line :][-20:])
            await self.kill()
            raise DeviceStartError(f"firmware did not start:\n{tail}") from exc
        self.port = int(match.group(1))

    async def _reap(self) -> None:
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_STOP_GRACE_S):
                await asyncio.gather(*self._pumps)
        for task in self._pumps:
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        self._pumps = []
        self._proc = None

    async def stop(self) -> None:
        """Graceful: SIGTERM, then SIGKILL if it has not exited within a few seconds."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(_STOP_GRACE_S):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        await self._reap()

    async def kill(self) -> None:
        """SIGKILL: a power cut at whatever point the firmware has reached."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        await self._reap()

    async def power_cycle(self, timeout: float = 15) -> None:  # noqa: ASYNC109
        await self.kill()
        await self.start(timeout)

    async def sim(self, op: str, **kwargs: object) -> dict[str, object]:
        """One request to the simulated HAL's control port; raises SimControlError if refused."""
        if self.port is None:
            raise SimControlError("device is not running")
        request = json.dumps({"op": op, **kwargs}).encode() + b"\n"
        try:
            async with asyncio.timeout(_SIM_TIMEOUT_S):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                try:
                    writer.write(request)
                    await writer.drain()
                    line = await reader.readline()
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (OSError, TimeoutError) as exc:
            raise SimControlError(f"sim {op}: {exc!r}") from exc
        try:
            reply = json.loads(line)
        except ValueError as exc:
            raise SimControlError(f"sim {op}: unreadable reply {line!r}") from exc
        if not isinstance(reply, dict) or reply.get("ok") is not True:
            raise SimControlError(f"sim {op} refused: {reply!r}")
        return reply

    async def wait_output(
        self,
        pattern: str,
        timeout: float = 10,  # noqa: ASYNC109
        start: int = 0,
    ) -> re.Match[str]:
        """First line at index >= start matching ``pattern`` (re.search), waiting for it."""
        regex = re.compile(pattern)
        index = start
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._new_line.clear()
                    while index < len(self._lines):
                        match = regex.search(self._lines[index])
                        if match:
                            return match
                        index += 1
                    await self._new_line.wait()
        except TimeoutError as exc:
            raise OutputTimeoutError(f"no output line matched {pattern!r} in {timeout}s") from exc

    async def wait_online(self, timeout: float = 10) -> None:  # noqa: ASYNC109
        """Until this boot's firmware is connected and subscribed (``LINK ready``)."""
        await self.wait_output(r"^LINK ready$", timeout, self.boot_line)

    def motor_runs(self, cmd_id: str | None = None) -> int:
        """SIM_MOTOR lines so far, over every boot; only those for ``cmd_id`` if given."""
        count = 0
        for line in self._lines:
            match = _MOTOR_LINE.match(line)
            if match and (cmd_id is None or match.group(2) == cmd_id):
                count += 1
        return count
