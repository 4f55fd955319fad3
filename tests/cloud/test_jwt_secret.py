"""The JWT secret: long enough to resist an offline search, and never empty."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from cloud.settings import CloudSettings


def test_a_short_configured_secret_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="at least 32"):
        CloudSettings(data_dir=tmp_path, jwt_secret="too-short")


def test_production_needs_a_secret(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="required in production"):
        CloudSettings(data_dir=tmp_path, environment="production")


def test_generated_secret_is_kept_private_and_reused(tmp_path: Path) -> None:
    settings = CloudSettings(data_dir=tmp_path / "data")
    first = settings.resolve_jwt_secret()
    assert len(first) >= 32
    assert settings.resolve_jwt_secret() == first
    assert (tmp_path / "data" / "jwt_secret").stat().st_mode & 0o777 == 0o600


def test_an_empty_secret_file_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "jwt_secret").write_text("")  # a crash while it was being written
    secret = CloudSettings(data_dir=tmp_path).resolve_jwt_secret()
    assert len(secret) >= 32
    assert (tmp_path / "jwt_secret").read_text() == secret
