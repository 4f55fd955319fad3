"""Make sure the local services the test suite needs are up: ``python tools/services.py ensure``.

The suite needs PostgreSQL on 127.0.0.1:5432 (cloud tests run on SQLite and on PostgreSQL) and
the ``mosquitto`` binary (firmware tests run against an external broker too; the suite starts its
own Mosquitto on an ephemeral port, so the one on 1883 is never touched).
"""

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

PG_HOST, PG_PORT = "127.0.0.1", 5432


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=False)


def _apt_install(*packages: str) -> None:
    if shutil.which("apt-get") is None:
        raise SystemExit(f"missing {packages} and no apt-get to install them")
    _run(["apt-get", "update", "-qq"])
    _run(["apt-get", "install", "-y", "-qq", *packages])


def ensure_postgres() -> None:
    if _port_open(PG_HOST, PG_PORT):
        return
    if shutil.which("pg_ctlcluster") is None:
        _apt_install("postgresql")
    versions = sorted(p.name for p in Path("/etc/postgresql").glob("*"))
    if versions:
        _run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"])
    deadline = time.monotonic() + 30
    while not _port_open(PG_HOST, PG_PORT):
        if time.monotonic() > deadline:
            raise SystemExit("PostgreSQL did not come up on 127.0.0.1:5432")
        time.sleep(0.5)


def ensure_mosquitto() -> None:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        _apt_install("mosquitto")


def main(argv: list[str]) -> int:
    if argv[1:] != ["ensure"]:
        print("usage: services.py ensure", file=sys.stderr)
        return 2
    ensure_postgres()
    ensure_mosquitto()
    print("services: postgres and mosquitto ready", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
