"""VirtualDevice: one MicroPython unix-port process running the firmware from a flash dir.

Two ways to run it. Piped (the default): one process, stdout and stderr read line by line, no
input; it stops when the firmware ends. Serial (``serial=True``): a virtual board behind a
pseudo-terminal that the real ``mpremote`` talks to; see ``VirtualDevice``.
"""

import asyncio
import contextlib
import json
import re
import signal
import termios
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from tools.virtual_esp32.boot_modes import (
    HARD_RESET_EXIT,
    BootMode,
    boot_script,
    has_firmware,
    next_boot,
)
from tools.virtual_esp32.errors import (
    DeviceStartError,
    OutputTimeoutError,
    SimControlError,
)
from tools.virtual_esp32.flash import (
    FLASH_UMASK,
    erase_flash,
    install,
    private_flash_dir,
    venv_tool,
)
from tools.virtual_esp32.pty_link import (
    PtyLink,
    console_mode,
    open_console,
    open_host_port,
    take_controlling_tty,
)

_STOP_GRACE_S = 3.0
_SIM_TIMEOUT_S = 5.0
_MOTOR_LINE = re.compile(r"^SIM_MOTOR (\S+) (\S+)$")
_SIM_PORT_LINE = r"^SIM_PORT (\d+)$"
_SIM_PORT_RE = re.compile(_SIM_PORT_LINE)
# A boot that dies on its own (not a reset) restarts after this, so a crash loop cannot spin.
_CRASH_RESTART_DELAY_S = 1.0
# Output still in flight in the pty when the interpreter exits: polls of the console after exit.
_SETTLE_POLLS = 5
_SETTLE_POLL_S = 0.01
_TAIL_BYTES = 64
_FRIENDLY_PROMPT = b">>> "
_RAW_PROMPT = b"raw REPL; CTRL-B to exit\r\n>"
# friendly prompt, raw REPL entered, raw REPL after running a command
_PROMPTS = (_FRIENDLY_PROMPT, _RAW_PROMPT, b"\x04>")
_CTRL_A = b"\x01"
_CTRL_C = b"\x03"
# Host input waits until a new boot has printed something (its Ctrl-C handler is then in
# place: an earlier SIGINT would kill or miss the interpreter), or this long for a silent one.
_HOLD_CAP_S = 2.0
# A Ctrl-C that has not reached a REPL prompt yet when the interpreter exits (it raced a
# reset) makes the next boot stop at the REPL, as the host asked, instead of running main.py.
_INTERRUPT_MEMORY_S = 3.0


async def sim_request(port: int, op: str, **kwargs: object) -> dict[str, object]:
    """One request to a running virtual device's simulated HAL control port (a line of JSON
    each way, docs/firmware.md "Simulated HAL"); raises SimControlError when nothing answers,
    the answer is unreadable, or the device refused it."""
    request = json.dumps({"op": op, **kwargs}).encode() + b"\n"
    try:
        async with asyncio.timeout(_SIM_TIMEOUT_S):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
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


class VirtualDevice:
    """Async context manager around the firmware process; ``__aexit__`` stops it (``close``).

    Output lines (stdout and stderr of every boot) are kept in ``output_lines``; markers the
    firmware prints: ``SIM_PORT``, ``BOOT``, ``READY heap_free``, ``LINK up|ready|down``, ``LOG``,
    ``EVENTS acked <n> pending <m>``,
    ``SIM_MOTOR <slot> <cmd_id>``, ``SIM_HOLD motor <cmd_id>``.

    Serial mode (``serial=True``) is a board on a USB port. ``serial_path`` (``/dev/pts/N``) is
    created by the first ``start`` and stays the same until ``close``, across ``kill``/``start``
    and every reboot; the real ``mpremote connect <serial_path> resume ...`` works on it. At
    power-on the interpreter runs ``micropython -i``: boot.py then main.py if present, else the
    REPL; Ctrl-C interrupts main.py into the REPL; the raw REPL (Ctrl-A, raw paste) is the unix
    port's own. The unix port exits on a soft reset; the supervisor starts the next boot on the
    same flash and console: after Ctrl-D at the friendly REPL, ``sys.exit()`` or
    ``machine.soft_reset()`` it prints ``MPY: soft reboot`` and runs boot.py and main.py; after
    Ctrl-D on an empty raw-REPL line (mpremote without ``resume``) it prints ``MPY: soft reboot``,
    runs boot.py only and enters the raw REPL, as a board does; ``machine.reset()`` (mpremote
    ``reset``) is a hard reset: boot.py and main.py. ``boots`` counts boots; ``wait_boot`` waits
    for the next one. The console's output is forwarded to the port and split into
    ``output_lines`` (REPL traffic included).
    """

    def __init__(
        self,
        flash_dir: Path,
        *,
        heapsize: str = "96K",
        precompile: bool = True,
        serial: bool = False,
    ) -> None:
        self.flash_dir = flash_dir
        self.heapsize = heapsize
        self.precompile = precompile
        self.serial = serial
        self._lines: list[str] = []
        self._new_line = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self.port: int | None = None
        self.boot_line = 0  # index in output_lines where the current boot's output starts
        self.boots = 0  # processes started so far (power-ons and reboots)
        # serial mode
        self._host: PtyLink | None = None
        self._console: PtyLink | None = None
        self._powered = False
        self._power_lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self._partial = b""
        self._tail = b""  # last bytes of this boot's console output
        self._ready = False  # this boot reached SIM_PORT or a REPL prompt
        self._held: bytearray | None = None  # host input kept back while a boot starts
        self._mode = BootMode.FULL
        self._interrupt_at: float | None = None  # a host Ctrl-C not yet answered by a prompt

    @staticmethod
    def install(flash_dir: Path, config: dict[str, object], *, precompile: bool = True) -> None:
        install(flash_dir, config, precompile=precompile)

    @staticmethod
    def erase(flash_dir: Path) -> Path:
        """A blank flash (no firmware): the board boots to the REPL and waits to be flashed."""
        return erase_flash(flash_dir)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def output_lines(self) -> list[str]:
        return list(self._lines)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        """Process id of the interpreter of the current boot, while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def powered(self) -> bool:
        """Serial mode: between ``start`` and ``kill``/``stop``, reboots included. Piped:
        ``running``."""
        return self._powered if self.serial else self.running

    @property
    def serial_path(self) -> str | None:
        """The board's serial port (``/dev/pts/N``) in serial mode, once started; else None."""
        return self._host.path if self._host is not None else None

    def _add_line(self, text: str) -> None:
        self._lines.append(text)
        match = _SIM_PORT_RE.match(text)
        if match and self.port is None:
            self.port = int(match.group(1))
            self._ready = True
        self._new_line.set()

    async def _pump(self, stream: asyncio.StreamReader) -> None:
        while True:
            raw = await stream.readline()
            if not raw:
                return
            self._add_line(raw.decode("utf-8", "replace").rstrip("\r\n"))

    # `timeout` parameters are this harness's published interface (callers pass seconds).
    async def start(self, timeout: float = 15) -> None:  # noqa: ASYNC109
        if self.running:
            raise DeviceStartError("already running")
        # A flash made by hand or by an older version is tightened before the board runs.
        private_flash_dir(self.flash_dir)
        if self.serial:
            await self._start_serial(timeout)
            return
        self.boot_line = len(self._lines)
        self.port = None
        self.boots += 1
        self._proc = await asyncio.create_subprocess_exec(
            venv_tool("micropython"),
            "-X",
            f"heapsize={self.heapsize}",
            "-c",
            "import boot\nimport main\n",
            cwd=self.flash_dir,
            umask=FLASH_UMASK,
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
        """Graceful: SIGTERM, then SIGKILL if it has not exited within a few seconds. In serial
        mode the port stays (``close`` removes it)."""
        if self.serial:
            await self._power_off(graceful=True)
            return
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
        if self.serial:
            await self._power_off(graceful=False)
            return
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
        return await sim_request(self.port, op, **kwargs)

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

    async def close(self) -> None:
        """Stop the device and, in serial mode, remove its serial port (unplug the cable)."""
        await self.stop()
        for link in (self._host, self._console):
            if link is not None:
                link.close()
        self._host = self._console = None

    async def _wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout):
                while not ready():
                    self._new_line.clear()
                    await self._new_line.wait()
        except TimeoutError as exc:
            raise OutputTimeoutError(f"{what} not within {timeout}s") from exc

    async def wait_boot(self, after: int, timeout: float = 15) -> None:  # noqa: ASYNC109
        """Serial mode: until a boot numbered above ``after`` (a ``boots`` value read before a
        reset) has printed ``SIM_PORT`` or reached a REPL prompt."""
        await self._wait_until(
            lambda: self.boots > after and self._ready, timeout, f"a boot after #{after}"
        )

    # --- serial mode -------------------------------------------------------------------

    async def _start_serial(self, timeout: float) -> None:  # noqa: ASYNC109
        if self._powered:
            raise DeviceStartError("already powered on (rebooting)")
        if self._host is None:
            self._host = open_host_port(self._on_host_input)
            self._console = open_console(self._on_console_output)
        self._powered = True
        self._interrupt_at = None
        async with self._power_lock:
            await self._boot(BootMode.FULL)
        firmware = has_firmware(self.flash_dir)
        before = self.boots - 1
        try:
            await self.wait_boot(before, timeout)
        except OutputTimeoutError as exc:
            tail = "\n".join(self._lines[self.boot_line :][-20:])
            await self.kill()
            raise DeviceStartError(f"virtual board did not boot:\n{tail}") from exc
        if firmware and self.port is None:
            tail = "\n".join(self._lines[self.boot_line :][-20:])
            await self.kill()
            raise DeviceStartError(f"firmware did not start:\n{tail}")

    def _on_host_input(self, data: bytes) -> None:
        if not self._powered or self._console is None:
            return  # the board is off: what the host sends is lost
        if _CTRL_C in data and not self._at_prompt():
            self._interrupt_at = time.monotonic()
        if self._held is not None:
            self._held += data
            return
        self._console.write(data)

    def _at_prompt(self) -> bool:
        """Waiting at a REPL prompt, where Ctrl-C is a line-editing key, not an interrupt."""
        return self._tail.endswith(_PROMPTS)

    def _release_input(self, prefix: bytes = b"") -> None:
        if self._held is None or self._console is None:
            return
        held, self._held = bytes(self._held), None
        self._console.write(prefix + held)

    def _hold_expired(self, boot: int) -> None:
        if boot == self.boots and self._mode is not BootMode.RAW_REPL:
            self._release_input()

    def _flush_partial(self) -> None:
        if self._partial:
            self._add_line(self._partial.decode("utf-8", "replace").rstrip("\r"))
            self._partial = b""

    def _on_console_output(self, data: bytes) -> None:
        if self._host is not None:
            self._host.write(data)
        self._tail = (self._tail + data)[-_TAIL_BYTES:]
        *lines, self._partial = (self._partial + data).split(b"\n")
        for raw in lines:
            self._add_line(raw.decode("utf-8", "replace").rstrip("\r"))
        if self._at_prompt():
            self._ready = True
            self._interrupt_at = None
        if self._held is not None and self.running:
            if self._mode is not BootMode.RAW_REPL:
                self._release_input()
            elif self._tail.endswith(_FRIENDLY_PROMPT):
                # The board stays in the raw REPL after a soft reset from it.
                self._release_input(_CTRL_A)
        self._new_line.set()

    async def _boot(self, mode: BootMode) -> None:
        """Start one interpreter on the console (the caller holds the power lock)."""
        console = self._console
        assert console is not None
        console_mode(console.slave)  # a killed interpreter may have left its raw mode behind
        self._flush_partial()
        self.boot_line = len(self._lines)
        self.port = None
        self._tail = b""
        self._ready = False
        if self._held is None:
            self._held = bytearray()
        self._mode = mode
        self.boots += 1
        self._proc = await asyncio.create_subprocess_exec(
            venv_tool("micropython"),
            "-X",
            f"heapsize={self.heapsize}",
            "-i",
            "-c",
            boot_script(self.flash_dir, mode),
            cwd=self.flash_dir,
            umask=FLASH_UMASK,
            stdin=console.slave,
            stdout=console.slave,
            stderr=console.slave,
            start_new_session=True,
            preexec_fn=take_controlling_tty,
        )
        self._watcher = asyncio.create_task(self._watch(self._proc), name="vdev-watch")
        asyncio.get_running_loop().call_later(_HOLD_CAP_S, self._hold_expired, self.boots)
        self._new_line.set()

    async def _settle_console(self) -> None:
        """Read what the exited interpreter wrote last (its exit message decides the reboot)."""
        console = self._console
        if console is None:
            return
        for _ in range(_SETTLE_POLLS):
            await asyncio.sleep(_SETTLE_POLL_S)
            if console.drain() == 0:
                break

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        """Reboot when the interpreter exits by itself (a reset), never after a power-off."""
        returncode = await proc.wait()
        if self._held is None:
            self._held = bytearray()  # nobody reads the console until the next boot
        async with self._power_lock:
            if not self._powered or proc is not self._proc:
                return
            await self._settle_console()
            mode, banner = next_boot(returncode, self._tail)
            interrupted = self._interrupt_at is not None and (
                time.monotonic() - self._interrupt_at < _INTERRUPT_MEMORY_S
            )
            if interrupted and mode is BootMode.FULL:
                mode = BootMode.REPL
            if returncode not in (0, HARD_RESET_EXIT, -signal.SIGINT):
                self._add_line(f"VESP exited {returncode}, rebooting")
                await asyncio.sleep(_CRASH_RESTART_DELAY_S)
            self._flush_partial()
            if banner and self._host is not None:
                self._host.write(banner)
                self._add_line(banner.decode().rstrip("\r\n"))
            await self._boot(mode)

    async def _power_off(self, *, graceful: bool) -> None:
        self._powered = False
        async with self._power_lock:
            watcher, self._watcher = self._watcher, None
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            proc, self._proc = self._proc, None
            if proc is not None and proc.returncode is None:
                if graceful:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGTERM)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_STOP_GRACE_S):
                            await proc.wait()
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
            if self._console is not None:
                self._console.drain()
                self._console.discard_pending()
                # Input queued for the dead interpreter is lost with the power.
                termios.tcflush(self._console.slave, termios.TCIFLUSH)
            self._held = None
            self._flush_partial()
