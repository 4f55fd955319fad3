"""The cloud tests' fixtures live in tests/shared/cloud_fixtures.py (other suites use them too);
pytest finds them through these names."""

from cloud_fixtures import (
    _client_ssl_fixture,
    _make_key_and_csr_fixture,
    api,
    cloud,
    db_url,
    enroll,
    http,
    jwt_secret,
    make_tenant,
    password,
    poll,
    postgres_url,
    settings,
    tenant,
)

__all__ = [
    "_client_ssl_fixture",
    "_make_key_and_csr_fixture",
    "api",
    "cloud",
    "db_url",
    "enroll",
    "http",
    "jwt_secret",
    "make_tenant",
    "password",
    "poll",
    "postgres_url",
    "settings",
    "tenant",
]
