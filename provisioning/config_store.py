"""The technician's stored cloud login: one JSON file in the user's config directory, readable
by the owner only (it holds a refresh token)."""

import json
import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from provisioning.errors import ConfigStoreError, NotLoggedIn

CONFIG_DIR_ENV = "VENDCTL_CONFIG_DIR"
LOGIN_FILE = "login.json"


class StoredLogin(BaseModel):
    model_config = ConfigDict(extra="ignore")

    cloud_url: str
    email: str
    access_token: str
    refresh_token: str


def config_dir() -> Path:
    """``$VENDCTL_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/vendctl``, else ``~/.config/vendctl``."""
    explicit = os.environ.get(CONFIG_DIR_ENV)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg else Path.home() / ".config"
    return base / "vendctl"


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600 from the first byte on; a directory
    made for it is 0700 (an existing one is left as the user made it)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ConfigStore:
    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or config_dir()

    @property
    def login_path(self) -> Path:
        return self.directory / LOGIN_FILE

    def load(self) -> StoredLogin:
        path = self.login_path
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise NotLoggedIn("not logged in, run vendctl login") from exc
        except OSError as exc:
            raise ConfigStoreError(f"cannot read {path}: {exc.strerror}") from exc
        try:
            return StoredLogin.model_validate(json.loads(text))
        except (ValueError, ValidationError) as exc:
            raise ConfigStoreError(f"{path} is damaged; run vendctl login again") from exc

    def save(self, login: StoredLogin) -> None:
        try:
            if not self.directory.exists():
                # Only a directory made here is tightened: $VENDCTL_CONFIG_DIR may name a shared
                # one, and the file itself is 0600 either way.
                self.directory.mkdir(parents=True, mode=0o700)
                os.chmod(self.directory, 0o700)
            write_private(self.login_path, login.model_dump_json(indent=1))
        except OSError as exc:
            raise ConfigStoreError(f"cannot write {self.login_path}: {exc.strerror}") from exc

    def clear(self) -> bool:
        try:
            self.login_path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise ConfigStoreError(f"cannot remove {self.login_path}: {exc.strerror}") from exc
        return True
