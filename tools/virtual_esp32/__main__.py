"""Run one virtual ESP32 in the foreground: ``python -m tools.virtual_esp32 FLASH_DIR``.

With ``--config FILE`` the firmware and that config are installed onto FLASH_DIR first (as the
technician's flash path would); without it FLASH_DIR must already hold them. With ``--serial``
it is a virtual board behind a pseudo-terminal: the first line printed is ``SERIAL /dev/pts/N``
(for ``mpremote connect /dev/pts/N resume ...``), and it keeps running across resets; with
``--erase`` the flash is wiped first, so the board boots to the REPL and waits to be flashed.
The device's output is echoed until Ctrl-C, which stops it. Exit code 1 when it cannot start.
"""

import argparse
import asyncio
import contextlib
import json
import sys
from pathlib import Path

from tools.virtual_esp32.device import VirtualDevice
from tools.virtual_esp32.errors import OutputTimeoutError, VirtualDeviceError


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.virtual_esp32", description=__doc__)
    parser.add_argument("flash_dir", type=Path)
    parser.add_argument("--config", type=Path, help="device config.json to install first")
    parser.add_argument("--heapsize", default="96K")
    parser.add_argument("--no-precompile", action="store_true", help="copy .py, skip mpy-cross")
    parser.add_argument("--serial", action="store_true", help="behind a pty, for mpremote")
    parser.add_argument("--erase", action="store_true", help="blank the flash first")
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> int:
    precompile = not args.no_precompile
    if args.erase:
        VirtualDevice.erase(args.flash_dir)
    if args.config is not None:
        config = json.loads(args.config.read_text())
        VirtualDevice.install(args.flash_dir, config, precompile=precompile)
    device = VirtualDevice(
        args.flash_dir, heapsize=args.heapsize, precompile=precompile, serial=args.serial
    )
    async with device:
        if device.serial_path is not None:
            print(f"SERIAL {device.serial_path}", flush=True)
        shown = 0
        while device.powered:
            with contextlib.suppress(OutputTimeoutError):
                await device.wait_output("", timeout=1, start=shown)
            lines = device.output_lines
            for line in lines[shown:]:
                print(line, flush=True)
            shown = len(lines)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 0
    except (VirtualDeviceError, OSError, ValueError) as exc:
        print(f"virtual_esp32: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
