"""Attack 4 outside the demo: the technician's and the operator's commands take passwords from
the environment or stdin (never the command line, which ``ps`` shows to every local user), and
a virtual ESP32's flash (config.json with the MQTT password and command key, the journal) is
readable by its owner only, whatever wrote it."""

import asyncio
import os
import sys
from pathlib import Path

from sec_secrets_support import Database, cloud_settings

from cloud.server import CloudServer
from tools.virtual_esp32 import VirtualDevice

BIN = Path(sys.executable).parent
EMAIL = "ops@files.example"
PASSWORD = "a password nobody sees in ps"


async def _run(argv: list[str], env: dict[str, str], stdin: bytes = b"") -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env={**os.environ, **env},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(stdin), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def test_passwords_come_from_the_environment_or_stdin(tmp_path: Path) -> None:
    path = tmp_path / "cloud.db"
    settings = cloud_settings(tmp_path, Database(f"sqlite+aiosqlite:///{path}", path, None), None)
    cloud_env = {
        "VENDING_CLOUD_DATABASE_URL": settings.database_url,
        "VENDING_CLOUD_DATA_DIR": str(settings.data_dir),
        "VENDING_CLOUD_PASSWORD_HASH_MEMORY_COST": "8",
        "VENDING_CLOUD_PASSWORD_HASH_TIME_COST": "1",
        "VENDING_CLOUD_PASSWORD_HASH_PARALLELISM": "1",
    }
    create = [str(BIN / "vending-cloud"), "create-tenant", "--name", "Files"]
    code, out = await _run(
        [*create, "--admin-email", EMAIL], cloud_env | {"VENDING_CLOUD_ADMIN_PASSWORD": PASSWORD}
    )
    assert code == 0, out
    code, out = await _run([*create, "--admin-email", "second@files.example"], cloud_env, b"")
    assert code == 1 and "no admin password" in out, out  # never a tenant with no password
    async with CloudServer(settings) as cloud:
        login = [str(BIN / "vendctl"), "login", "--cloud", cloud.api_url, "--email", EMAIL]
        config = tmp_path / "vendctl"
        code, out = await _run(
            login, {"VENDCTL_CONFIG_DIR": str(config), "VENDCTL_PASSWORD": PASSWORD}
        )
        assert code == 0, out
        code, out = await _run(
            login, {"VENDCTL_CONFIG_DIR": str(config)}, stdin=f"{PASSWORD}\n".encode()
        )
        assert code == 0, out
        code, out = await _run(
            login, {"VENDCTL_CONFIG_DIR": str(config)}, stdin=b"wrong password\n"
        )
        assert code != 0
        assert PASSWORD not in out
    assert config.stat().st_mode & 0o777 == 0o700
    assert (config / "login.json").stat().st_mode & 0o777 == 0o600


def _loose(root: Path) -> list[str]:
    """Directories and data files (config, journal) anyone but the owner could open. The
    firmware's own code (.py, .mpy) may be world-readable: it is public, and the 0700
    directories keep everyone else out anyway."""
    return [
        f"{p.relative_to(root)} {oct(p.stat().st_mode & 0o777)}"
        for p in [root, *root.rglob("*")]
        if p.stat().st_mode & 0o077 and (p.is_dir() or p.suffix not in (".py", ".mpy"))
    ]


async def test_virtual_esp32_flash_is_owner_only(tmp_path: Path) -> None:
    flash = tmp_path / "flash"
    flash.mkdir(mode=0o755)
    os.chmod(flash, 0o755)
    config: dict[str, object] = {
        "machine_id": "M1",
        "mqtt_host": "127.0.0.1",
        "mqtt_port": 9,  # nothing listens: the firmware keeps retrying, which is fine here
        "mqtt_password": "p" * 24,
        "command_key": "ab" * 32,
    }
    VirtualDevice.install(flash, config)
    assert _loose(flash) == []
    # What the firmware writes while it runs (journal, counters) is private too: the
    # interpreter runs with umask 077.
    before = {p.name for p in flash.rglob("*")}
    async with VirtualDevice(flash) as device:
        await device.sim("coin", amount=1000)  # a cash event the firmware journals
    assert {p.name for p in flash.rglob("*")} - before, "the firmware wrote nothing"
    assert _loose(flash) == []
