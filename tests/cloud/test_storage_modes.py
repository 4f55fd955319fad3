"""The data dir is owner-only (tightened if it existed), and a SQLite database holding command
keys is created 0600."""

import os
import stat
from pathlib import Path

import pytest

from cloud.server import CloudServer
from cloud.settings import CloudSettings


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def _usual_umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _settings(settings: CloudSettings, **changes: object) -> CloudSettings:
    return settings.model_copy(update=changes)


async def test_fresh_data_dir_and_sqlite_file_are_private(settings, tmp_path):
    data_dir = tmp_path / "fresh" / "data"
    changes: dict[str, object] = {"data_dir": data_dir}
    if settings.database_url.startswith("sqlite"):
        changes["database_url"] = f"sqlite+aiosqlite:///{data_dir / 'cloud.db'}"
    async with CloudServer(_settings(settings, **changes)):
        pass
    assert _mode(data_dir) == 0o700
    assert _mode(data_dir / "ca.key") == 0o600
    if settings.database_url.startswith("sqlite"):
        assert _mode(data_dir / "cloud.db") == 0o600


async def test_existing_open_data_dir_and_database_are_tightened(settings, tmp_path):
    data_dir = tmp_path / "old"
    data_dir.mkdir(mode=0o755)
    db = data_dir / "cloud.db"
    db.touch(mode=0o644)
    changes: dict[str, object] = {
        "data_dir": data_dir,
        "database_url": f"sqlite+aiosqlite:///{db}",
    }
    if not settings.database_url.startswith("sqlite"):
        del changes["database_url"]
    async with CloudServer(_settings(settings, **changes)):
        pass
    assert _mode(data_dir) == 0o700
    if settings.database_url.startswith("sqlite"):
        assert _mode(db) == 0o600


async def test_sqlite_outside_the_data_dir(settings, tmp_path):
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("SQLite file modes")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    existing = elsewhere / "shared.db"
    existing.touch(mode=0o640)
    async with CloudServer(_settings(settings, database_url=f"sqlite+aiosqlite:///{existing}")):
        pass
    # Not the cloud's directory: an operator's choice of mode is left alone.
    assert _mode(existing) == 0o640
    new = elsewhere / "new" / "cloud.db"
    async with CloudServer(_settings(settings, database_url=f"sqlite+aiosqlite:///{new}")):
        pass
    assert _mode(new) == 0o600
