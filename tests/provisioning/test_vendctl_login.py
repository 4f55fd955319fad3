"""vendctl login: stored owner-only, refreshed by itself, and clear when it cannot be."""

import json
import stat
import time

import jwt

from provisioning.cli import main


def _stored(config_dir):
    return json.loads((config_dir / "login.json").read_text())


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_login_stores_owner_only(account, isolated, capsys):
    rc = main(
        [
            "login",
            "--cloud",
            account.cloud.url + "/",
            "--email",
            account.email,
            "--password",
            account.password,
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert account.email in out
    path = isolated / "login.json"
    assert _mode(path) == 0o600
    assert _mode(isolated) == 0o700
    stored = _stored(isolated)
    assert set(stored) == {"cloud_url", "email", "access_token", "refresh_token"}
    assert stored["cloud_url"] == account.cloud.url
    assert stored["email"] == account.email
    assert account.password not in path.read_text()
    assert [f.name for f in isolated.iterdir()] == ["login.json"]  # no temp files left

    assert main(["site", "list"]) == 0
    assert account.site_id in capsys.readouterr().out


def _expire(token: str, secret: str) -> str:
    claims = jwt.decode(token, secret, algorithms=["HS256"])
    claims["iat"] = int(time.time()) - 3600
    claims["exp"] = int(time.time()) - 60
    return jwt.encode(claims, secret, algorithm="HS256")


def test_expired_access_token_is_refreshed(logged_in, isolated, jwt_secret, capsys):
    path = isolated / "login.json"
    before = _stored(isolated)
    expired = before | {"access_token": _expire(before["access_token"], jwt_secret)}
    path.write_text(json.dumps(expired))
    path.chmod(0o600)

    assert main(["site", "list"]) == 0
    assert logged_in.site_id in capsys.readouterr().out
    after = _stored(isolated)
    assert after["refresh_token"] != before["refresh_token"]  # rotated and saved
    assert after["access_token"] != expired["access_token"]
    assert _mode(path) == 0o600

    # The saved pair works again without another refresh.
    assert main(["site", "list"]) == 0
    assert _stored(isolated)["refresh_token"] == after["refresh_token"]


def test_rejected_access_token_is_refreshed_once(logged_in, isolated, capsys):
    path = isolated / "login.json"
    before = _stored(isolated)
    claims = jwt.decode(before["access_token"], options={"verify_signature": False})
    forged = jwt.encode(claims, "not-the-cloud-secret-" + "z" * 40, algorithm="HS256")
    path.write_text(json.dumps(before | {"access_token": forged}))

    assert main(["site", "list"]) == 0
    assert logged_in.site_id in capsys.readouterr().out
    assert _stored(isolated)["refresh_token"] != before["refresh_token"]


def test_revoked_login_says_run_login(logged_in, isolated, jwt_secret, capsys, one_line_error):
    stored = _stored(isolated)
    # Someone else rotates the stored refresh token: presenting it again is reuse, so the cloud
    # revokes the whole session.
    logged_in.cloud.run(lambda: _refresh_elsewhere(logged_in.cloud.url, stored["refresh_token"]))
    path = isolated / "login.json"
    path.write_text(
        json.dumps(stored | {"access_token": _expire(stored["access_token"], jwt_secret)})
    )
    rc = main(["site", "list"])
    line = one_line_error(capsys.readouterr().err)
    assert rc == 4
    assert line == "vendctl: error: login expired, run vendctl login"


async def _refresh_elsewhere(url, refresh_token):
    from provisioning.cloud_api import CloudApi

    async with CloudApi(url) as api:
        await api.refresh(refresh_token)


def test_not_logged_in(capsys, one_line_error):
    rc = main(["machine", "onboard", "--name", "M", "--site", "S"])
    assert rc == 4
    assert "not logged in, run vendctl login" in one_line_error(capsys.readouterr().err)


def test_damaged_login_file(isolated, capsys, one_line_error):
    isolated.mkdir()
    (isolated / "login.json").write_text("{not json")
    rc = main(["site", "list"])
    assert rc == 4
    assert "damaged" in one_line_error(capsys.readouterr().err)


def test_wrong_password(account, capsys, one_line_error):
    rc = main(
        ["login", "--cloud", account.cloud.url, "--email", account.email, "--password", "nope"]
    )
    assert rc == 4
    one_line_error(capsys.readouterr().err)


def test_wrong_cloud_urls(account, capsys, one_line_error):
    # Nothing listens there.
    rc = main(["login", "--cloud", "http://127.0.0.1:9", "--email", "a@b.c", "--password", "x"])
    assert rc == 3
    assert "cannot reach the cloud" in one_line_error(capsys.readouterr().err)
    # Not a URL at all.
    rc = main(["login", "--cloud", "cloud.example", "--email", "a@b.c", "--password", "x"])
    assert rc == 2
    assert "not a cloud URL" in one_line_error(capsys.readouterr().err)
    # A server that answers, but not with the cloud API under this prefix.
    rc = main(
        [
            "login",
            "--cloud",
            account.cloud.url + "/elsewhere",
            "--email",
            "a@b.c",
            "--password",
            "x",
        ]
    )
    assert rc == 1
    one_line_error(capsys.readouterr().err)


def test_logout_revokes_and_forgets(logged_in, isolated, capsys):
    stored = _stored(isolated)
    assert main(["logout"]) == 0
    assert not (isolated / "login.json").exists()

    async def reuse():
        from provisioning.cloud_api import CloudApi
        from provisioning.errors import NotLoggedIn

        async with CloudApi(logged_in.cloud.url) as api:
            try:
                await api.refresh(stored["refresh_token"])
            except NotLoggedIn:
                return True
        return False

    assert logged_in.cloud.run(reuse)
