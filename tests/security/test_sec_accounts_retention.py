"""Account records do not pile up for ever (``vending-cloud prune-auth``): expired refresh
tokens, sessions with none left, stale throttle rows and old audit rows go; live sessions, and
rotated tokens still needed to catch a reuse, stay."""

# ruff: noqa: F811 - pytest fixtures are imported by name and then taken as parameters
from datetime import timedelta

import sqlalchemy as sa
from sec_accounts_support import (  # noqa: F401
    api,
    cloud,
    db_url,
    http,
    login,
    make_tenant,
    postgres_url,
    settings,
    tenant,
)

from cloud.__main__ import main
from cloud.auth.retention import prune_auth_records
from cloud.db import schema as t
from cloud.db.times import utcnow


async def _count(cloud, table) -> int:
    async with cloud.engine.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(table)))


async def test_prune_keeps_what_is_live_and_drops_the_rest(api, tenant, cloud, settings):
    live = await api.login(tenant.email)
    rotated = await api.call(
        "POST", "/api/v1/auth/refresh", {"refresh_token": live["refresh_token"]}
    )
    assert rotated.status == 200
    assert (await login(api, "nobody@nowhere.example", "x")).status == 401
    now = utcnow()
    pruned = await prune_auth_records(cloud.engine, settings, audit_days=90, now=now)
    assert (pruned.refresh_tokens, pruned.sessions, pruned.audit_rows) == (0, 0, 0)
    # Nothing live was touched: the admin fixture's session works.
    assert (await tenant.admin.call("GET", "/api/v1/auth/profile")).status == 200
    # The rotated token stays until it expires: presenting it again still ends the session.
    reuse = await api.call("POST", "/api/v1/auth/refresh", {"refresh_token": live["refresh_token"]})
    assert reuse.status == 401 and "reuse" in reuse.error["message"]

    later = now + timedelta(seconds=settings.refresh_token_ttl_s + 1, days=91)
    pruned = await prune_auth_records(cloud.engine, settings, audit_days=90, now=later)
    assert pruned.refresh_tokens >= 3 and pruned.sessions >= 2 and pruned.audit_rows >= 3
    assert pruned.throttle_rows >= 1
    for table in (t.refresh_tokens, t.user_sessions, t.login_throttle, t.login_audit):
        assert await _count(cloud, table) == 0, table.name


def test_cli_prune_auth(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VENDING_CLOUD_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    monkeypatch.setenv("VENDING_CLOUD_DATA_DIR", str(tmp_path / "data"))
    assert main(["prune-auth", "--audit-days", "30"]) == 0
    assert "dropped 0 refresh tokens" in capsys.readouterr().out
