"""Running the external programs of the flash path (esptool, mpy-cross, mpremote) as
subprocesses with a deadline, their output streamed line by line to the caller."""

import asyncio
import contextlib
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from provisioning.errors import FlashError

LineHandler = Callable[[str], None]


@dataclass(frozen=True)
class ToolResult:
    returncode: int
    stdout: list[str]
    stderr: list[str]

    def last_words(self) -> str:
        """The most telling line of a failure: the last non-empty stderr line, else stdout."""
        for lines in (self.stderr, self.stdout):
            for line in reversed(lines):
                if line.strip():
                    return line.strip()
        return f"exit code {self.returncode}"


async def _pump(stream: asyncio.StreamReader, sink: list[str], on_line: LineHandler | None) -> None:
    pending = b""
    while True:
        chunk = await stream.read(4096)
        if not chunk:
            break
        pending += chunk
        # Progress output uses bare carriage returns; both end a line here.
        *lines, pending = pending.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            sink.append(line)
            if on_line is not None:
                on_line(line)
    if pending:
        line = pending.decode("utf-8", "replace")
        sink.append(line)
        if on_line is not None:
            on_line(line)


async def run_tool(
    argv: Sequence[str],
    *,
    timeout_s: float,
    what: str,
    on_line: LineHandler | None = None,
    passthrough: bool = False,
) -> ToolResult:
    """Run ``argv``; ``passthrough`` leaves stdout/stderr on the terminal (esptool's own
    progress). A missing program or the deadline passing raises ``FlashError``; a non-zero exit
    is returned for the caller to judge."""
    pipe = None if passthrough else asyncio.subprocess.PIPE
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=pipe, stderr=pipe
        )
    except OSError as exc:
        raise FlashError(f"{what}: cannot run {argv[0]}: {exc.strerror or exc}") from exc
    out: list[str] = []
    err: list[str] = []
    try:
        async with asyncio.timeout(timeout_s):
            pumps = []
            if proc.stdout is not None:
                pumps.append(_pump(proc.stdout, out, on_line))
            if proc.stderr is not None:
                pumps.append(_pump(proc.stderr, err, None))
            await asyncio.gather(*pumps)
            returncode = await proc.wait()
    except TimeoutError as exc:
        raise FlashError(f"{what} did not finish within {timeout_s:.0f} s") from exc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await proc.wait()
    return ToolResult(returncode, out, err)


def show(argv: Sequence[str]) -> str:
    return shlex.join(argv)
