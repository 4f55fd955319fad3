"""Where the cloud keeps private files: ``data_dir`` (CA key, JWT secret) is owner-only, and a
SQLite database (it holds machine command keys) is created owner-only."""

import os
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from cloud.errors import ConfigurationError
from cloud.settings import CloudSettings

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> None:
    """Create ``path`` owner-only, and tighten it if it already existed more open."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        if path.stat().st_mode & 0o777 != DIR_MODE:
            path.chmod(DIR_MODE)
    except OSError as exc:
        raise ConfigurationError(f"cannot prepare directory {path}: {exc}") from exc


def sqlite_path(database_url: str) -> Path | None:
    """The file of a SQLite URL; None for other backends and in-memory databases."""
    try:
        url = make_url(database_url)
    except ArgumentError as exc:
        raise ConfigurationError(f"bad database url: {exc}") from exc
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def _private_file(path: Path, tighten: bool) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        if tighten and path.stat().st_mode & 0o777 != FILE_MODE:
            path.chmod(FILE_MODE)
        return
    os.close(fd)


def prepare_storage(settings: CloudSettings) -> None:
    """Before anything writes there: the data dir owner-only, and a SQLite file created 0600
    (an existing one is tightened only when it lives in the data dir, which the cloud owns)."""
    data_dir = settings.data_dir
    private_dir(data_dir)
    db_path = sqlite_path(settings.database_url)
    if db_path is None:
        return
    inside = db_path.resolve().is_relative_to(data_dir.resolve())
    try:
        if not db_path.parent.exists():
            db_path.parent.mkdir(mode=DIR_MODE, parents=True)
        _private_file(db_path, tighten=inside)
    except OSError as exc:
        raise ConfigurationError(f"cannot prepare database file {db_path}: {exc}") from exc
