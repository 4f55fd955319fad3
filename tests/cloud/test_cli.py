"""``vending-cloud migrate`` and ``create-tenant``."""

import asyncio

import pytest
import sqlalchemy as sa

from cloud.__main__ import main
from cloud.db import schema as t
from cloud.db.engine import create_engine


def test_migrate_and_create_tenant(tmp_path, monkeypatch, capsys):
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("VENDING_CLOUD_DATABASE_URL", url)
    monkeypatch.setenv("VENDING_CLOUD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("VENDING_CLOUD_PASSWORD_HASH_MEMORY_COST", "8")
    monkeypatch.setenv("VENDING_CLOUD_PASSWORD_HASH_TIME_COST", "1")
    monkeypatch.setenv("VENDING_CLOUD_PASSWORD_HASH_PARALLELISM", "1")
    assert main(["migrate"]) == 0
    args = [
        "create-tenant",
        "--name",
        "Acme",
        "--admin-email",
        "Ops@Acme.example",
        "--admin-password",
        "long password",
    ]
    assert main(args) == 0
    tenant_id = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(args) == 1  # duplicate

    async def check() -> tuple[str, str]:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                row = (await conn.execute(sa.select(t.users.c.email, t.users.c.role))).one()
                tenant = await conn.scalar(sa.select(t.tenants.c.id))
        finally:
            await engine.dispose()
        assert tenant == tenant_id
        return row.email, row.role

    assert asyncio.run(check()) == ("ops@acme.example", "admin")


def test_production_needs_a_jwt_secret(monkeypatch):
    monkeypatch.setenv("VENDING_CLOUD_ENVIRONMENT", "production")
    assert main(["migrate"]) == 2


@pytest.mark.parametrize("bad", ["mysql://x/y", "not a url"])
def test_bad_database_url(monkeypatch, bad, tmp_path):
    monkeypatch.setenv("VENDING_CLOUD_DATABASE_URL", bad)
    assert main(["migrate"]) == 1
