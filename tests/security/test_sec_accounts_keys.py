"""JWT signing keys carry a kid and rotate: older keys verify until their tokens expire, then are
dropped, and a token signed with a dropped (or unknown) key is refused."""

# ruff: noqa: F811 - pytest fixtures are imported by name and then taken as parameters
import json
import time
from datetime import timedelta

import jwt
import pytest
from polling import wait_for
from sec_accounts_support import (  # noqa: F401
    JWT_SECRET,
    MASTER_KEYS,
    api,
    cloud,
    db_url,
    http,
    make_tenant,
    postgres_url,
    settings,
    tenant,
)

from cloud.__main__ import main
from cloud.auth import keys
from cloud.db.times import utcnow
from cloud.settings import CloudSettings


def _kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


async def test_rotation_old_keys_verify_until_expiry_then_are_refused(api, tenant, settings):
    before = await api.login(tenant.email)
    legacy = _kid(before["access_token"])
    assert legacy == keys.legacy_kid(JWT_SECRET)

    new_kid = keys.rotate(settings)
    path = settings.resolve_jwt_keys_file()
    assert path.stat().st_mode & 0o777 == 0o600
    stored = json.loads(path.read_text())
    assert {k["kid"]: k["state"] for k in stored["keys"]} == {legacy: "retired", new_kid: "active"}

    async def signs_with_new_key() -> dict | None:
        tokens = await api.login(tenant.email)
        return tokens if _kid(tokens["access_token"]) == new_kid else None

    after = await wait_for(signs_with_new_key, within=10)
    # The old-but-unexpired token still works, and so does the new one.
    assert (await api.as_user(before["access_token"]).call("GET", "/api/v1/machines")).status == 200
    assert (await api.as_user(after["access_token"]).call("GET", "/api/v1/machines")).status == 200

    # Once every token the old key signed has expired, the key is dropped ...
    later = utcnow() + timedelta(seconds=settings.access_token_ttl_s + keys.RETIRE_GRACE_S + 1)
    assert keys.prune(settings, now=later) == [legacy]

    async def old_token_refused() -> bool:
        reply = await api.as_user(before["access_token"]).call("GET", "/api/v1/machines")
        return reply.status == 401

    # ... and a token signed with it is refused (here one that has not expired yet).
    assert await wait_for(old_token_refused, within=10)
    assert (await api.as_user(after["access_token"]).call("GET", "/api/v1/machines")).status == 200


async def test_staged_key_verifies_before_it_signs(api, tenant, settings):
    staged = keys.rotate(settings, stage=True)
    ring = keys.load_key_ring(settings)
    assert ring.active.kid != staged
    assert ring.find(staged) is not None and ring.find(staged).state == "staged"
    assert keys.rotate(settings) == staged  # the next rotation promotes it
    assert keys.load_key_ring(settings).active.kid == staged


async def test_tokens_with_unknown_or_forged_keys_are_refused(api, tenant):
    tokens = await api.login(tenant.email)
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    now = int(time.time())
    claims.update(iat=now, exp=now + 300)
    for kid, secret in [
        ("no-such-key", JWT_SECRET),
        (_kid(tokens["access_token"]), "a-guessed-secret-that-is-long-enough-000"),
    ]:
        forged = jwt.encode(claims, secret, algorithm="HS256", headers={"kid": kid})
        reply = await api.as_user(forged).call("GET", "/api/v1/machines")
        assert reply.status == 401, kid
    none_alg = jwt.encode(claims, None, algorithm="none")
    assert (await api.as_user(none_alg).call("GET", "/api/v1/machines")).status == 401


def test_cli_rotates_and_never_prints_a_secret(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VENDING_CLOUD_DATA_DIR", str(tmp_path / "data"))
    assert main(["rotate-jwt-key"]) == 0
    assert main(["rotate-jwt-key", "--stage"]) == 0
    assert main(["rotate-jwt-key", "--prune"]) == 0
    out = capsys.readouterr().out
    stored = json.loads((tmp_path / "data" / "jwt_keys.json").read_text())
    assert len(stored["keys"]) == 3  # the generated secret (retired), the active, the staged
    for key in stored["keys"]:
        assert key["secret"] not in out
        assert key["kid"] in out or key["legacy"]
    assert (tmp_path / "data" / "jwt_keys.json").stat().st_mode & 0o777 == 0o600


def test_production_signs_only_with_keys_it_was_given(tmp_path):
    # No generated secret in production (each replica would make its own): a missing key file
    # stops the start, and the first rotation creates it with one fresh key.
    keys_file = tmp_path / "secret" / "jwt_keys.json"
    prod = CloudSettings(
        environment="production",
        data_dir=tmp_path / "data",
        jwt_keys_file=keys_file,
        master_keys=MASTER_KEYS,
    )
    with pytest.raises(keys.KeyFileError, match="does not exist"):
        keys.load_key_ring(prod)
    kid = keys.rotate(prod)
    ring = keys.load_key_ring(prod)
    assert [k.kid for k in ring.keys] == [kid] and not ring.active.legacy
    assert not (tmp_path / "data" / "jwt_secret").exists()
