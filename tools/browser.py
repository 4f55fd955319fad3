"""The browser the page tests drive: Debian's ``chromium``, never a downloaded one.

``python tools/browser.py ensure`` installs the Debian package when it is missing (as root, with
apt-get); the test suite calls :func:`ensure_chromium` for the same thing. Playwright launches
the binary through ``executable_path=CHROMIUM`` with :data:`LAUNCH_ARGS`.

Standard library only, so it runs as a script before the project is importable.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
DEBIAN_PACKAGE = "chromium"

# No sandbox because tests run as root in a container; the rest keeps Chromium from reaching
# the network on its own (updates, sync, field trials) so a test only talks to loopback.
LAUNCH_ARGS: tuple[str, ...] = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

APT_TIMEOUT_S = 900


class BrowserUnavailable(RuntimeError):
    """Chromium is missing and cannot be installed here."""


def _apt(*args: str) -> None:
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", *args], check=True, env=env, timeout=APT_TIMEOUT_S)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise BrowserUnavailable(f"apt-get {' '.join(args)} failed: {exc}") from exc


def ensure_chromium() -> Path:
    """Return the Chromium binary, installing Debian's package first if it is missing."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    if shutil.which("apt-get") is None:
        raise BrowserUnavailable(
            f"{CHROMIUM} is missing and there is no apt-get: install Chromium "
            f"(Debian package {DEBIAN_PACKAGE!r}) so that {CHROMIUM} exists"
        )
    if os.geteuid() != 0:
        raise BrowserUnavailable(
            f"{CHROMIUM} is missing: run `sudo apt-get install -y {DEBIAN_PACKAGE}` "
            "(or run `python tools/browser.py ensure` as root)"
        )
    _apt("update", "-qq")
    _apt("install", "-y", "-qq", DEBIAN_PACKAGE)
    if not os.access(CHROMIUM, os.X_OK):
        raise BrowserUnavailable(f"installed {DEBIAN_PACKAGE!r} but {CHROMIUM} is still missing")
    return CHROMIUM


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["ensure"]:
        print("usage: browser.py ensure", file=sys.stderr)
        return 2
    try:
        path = ensure_chromium()
    except BrowserUnavailable as exc:
        print(f"browser: {exc}", file=sys.stderr)
        return 1
    print(f"browser: chromium ready at {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
