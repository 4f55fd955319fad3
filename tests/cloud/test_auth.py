"""Login, refresh rotation with reuse detection, logout, and bad tokens."""

import time

import jwt


async def test_login_profile_refresh_logout(api, tenant, jwt_secret):
    tokens = await api.login(tenant.email)
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 900
    claims = jwt.decode(tokens["access_token"], jwt_secret, algorithms=["HS256"])
    assert claims["tenantId"] == tenant.id
    assert claims["role"] == "admin"
    assert "machines:write" in claims["permissions"]
    assert {"sub", "iat", "exp", "jti"} <= set(claims)

    profile = await api.call("GET", "/api/v1/auth/profile", token=tokens["access_token"])
    assert profile.status == 200
    assert profile.data["email"] == tenant.email
    assert profile.data["tenant_id"] == tenant.id

    rotated = await api.call(
        "POST", "/api/v1/auth/refresh", {"refresh_token": tokens["refresh_token"]}
    )
    assert rotated.status == 200
    assert rotated.data["refresh_token"] != tokens["refresh_token"]

    out = await api.call(
        "POST", "/api/v1/auth/logout", {"refresh_token": rotated.data["refresh_token"]}
    )
    assert out.status == 200 and out.data == {"revoked": True}
    after = await api.call(
        "POST", "/api/v1/auth/refresh", {"refresh_token": rotated.data["refresh_token"]}
    )
    assert after.status == 401
    assert after.error["code"] == "unauthorized"


async def test_refresh_token_reuse_revokes_the_family(api, tenant):
    first = await api.login(tenant.email)
    second = await api.call(
        "POST", "/api/v1/auth/refresh", {"refresh_token": first["refresh_token"]}
    )
    assert second.status == 200
    # The first token was rotated; presenting it again means it leaked.
    reuse = await api.call(
        "POST", "/api/v1/auth/refresh", {"refresh_token": first["refresh_token"]}
    )
    assert reuse.status == 401
    assert "reuse" in reuse.error["message"]
    # ... and the legitimate holder's newer token is dead too.
    newer = await api.call(
        "POST", "/api/v1/auth/refresh", {"refresh_token": second.data["refresh_token"]}
    )
    assert newer.status == 401
    # Another session of the same user is untouched.
    other = await api.login(tenant.email)
    ok = await api.call("POST", "/api/v1/auth/refresh", {"refresh_token": other["refresh_token"]})
    assert ok.status == 200


async def test_bad_credentials_are_401(api, tenant, password):
    bad = await api.call("POST", "/api/v1/auth/login", {"email": tenant.email, "password": "nope"})
    assert bad.status == 401
    assert bad.error["code"] == "unauthorized"
    unknown = await api.call(
        "POST", "/api/v1/auth/login", {"email": "nobody@example.com", "password": password}
    )
    assert unknown.status == 401
    garbage = await api.call("POST", "/api/v1/auth/refresh", {"refresh_token": "garbage"})
    assert garbage.status == 401


async def test_garbage_expired_and_missing_access_tokens_are_401(api, tenant, jwt_secret):
    now = int(time.time())
    expired = jwt.encode(
        {
            "sub": "u",
            "tenantId": tenant.id,
            "role": "admin",
            "permissions": [],
            "sid": "s",
            "ver": 0,
            "iat": now - 1000,
            "exp": now - 10,
        },
        jwt_secret,
        algorithm="HS256",
    )
    forged = jwt.encode(
        {"sub": "u", "tenantId": tenant.id, "role": "admin", "iat": now, "exp": now + 100},
        "another-secret-that-is-long-enough-for-hs256",
        algorithm="HS256",
    )
    for token in ("garbage", expired, forged, ""):
        reply = await api.call("GET", "/api/v1/machines", token=token)
        assert reply.status == 401, token
        assert reply.error["code"] == "unauthorized"
    expired_reply = await api.call("GET", "/api/v1/machines", token=expired)
    assert "expired" in expired_reply.error["message"]
