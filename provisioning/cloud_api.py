"""A small typed client of the cloud's public API, for the technician CLI, the demo and tests.

Every call unwraps the success envelope and turns an error envelope into ``CloudApiError`` (or
``CloudUnreachable`` when nothing answered), so callers never parse envelopes themselves.
"""

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import aiohttp
import jwt

from provisioning.errors import CloudApiError, CloudUnreachable, NotLoggedIn

API = "/api/v1"
TIMEOUT_S = 15.0
# Refresh a little before the access token's own expiry, so a slow request does not straddle it.
REFRESH_SKEW_S = 30
LOGIN_EXPIRED = "login expired, run vendctl login"

_TOKEN_PATHS = frozenset({"/auth/login", "/auth/refresh", "/auth/logout"})

TokensSaved = Callable[[str, str], None]


class CloudApi:
    """``async with CloudApi(url) as api: await api.login(email, password); ...``"""

    def __init__(
        self,
        base_url: str,
        *,
        access_token: str | None = None,
        refresh_token: str | None = None,
        on_tokens: TokensSaved | None = None,
    ) -> None:
        """With ``refresh_token`` and ``on_tokens``, an expired access token is refreshed (and
        the rotated pair handed to ``on_tokens`` to be saved) before or after a 401."""
        self.base_url = base_url.rstrip("/")
        self.access_token = access_token
        self.refresh_token: str | None = refresh_token
        self._on_tokens = on_tokens
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def _auto_refresh(self) -> bool:
        return self._on_tokens is not None and self.refresh_token is not None

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        if not self._auto_refresh or path in _TOKEN_PATHS:
            return await self._send(method, path, body)
        await self.ensure_fresh()
        try:
            return await self._send(method, path, body)
        except NotLoggedIn:
            # Revoked or signed with a rotated secret although not yet expired: one retry.
            await self._renew()
        return await self._send(method, path, body)

    async def ensure_fresh(self) -> None:
        """Refresh now when the access token is missing or about to expire."""
        if not self._auto_refresh:
            return
        if _expires_at(self.access_token) > time.time() + REFRESH_SKEW_S:
            return
        await self._renew()

    async def _renew(self) -> None:
        if self.refresh_token is None:
            raise NotLoggedIn(LOGIN_EXPIRED)
        try:
            await self.refresh(self.refresh_token)
        except NotLoggedIn as exc:
            raise NotLoggedIn(LOGIN_EXPIRED, status=exc.status, code=exc.code) from exc
        if self._on_tokens is not None and self.access_token and self.refresh_token:
            self._on_tokens(self.access_token, self.refresh_token)

    async def _send(self, method: str, path: str, body: Any = None) -> Any:
        if self._session is None:
            raise RuntimeError("use CloudApi as an async context manager")
        headers = {"Authorization": f"Bearer {self.access_token}"} if self.access_token else {}
        url = f"{self.base_url}{API}{path}"
        try:
            async with self._session.request(method, url, json=body, headers=headers) as resp:
                status = resp.status
                try:
                    payload = await resp.json(content_type=None)
                except ValueError:
                    payload = None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise CloudUnreachable(f"cannot reach the cloud at {self.base_url}: {exc}") from exc
        if not isinstance(payload, dict):
            raise CloudApiError(
                f"{method} {path}: HTTP {status} without a JSON envelope (is {self.base_url} "
                "the cloud API?)",
                status=status,
            )
        if status >= 400 or not payload.get("success", False):
            error = payload.get("error") or {}
            message = f"{error.get('message', 'request failed')} (HTTP {status})"
            kind = NotLoggedIn if status == 401 else CloudApiError
            raise kind(message, status=status, code=error.get("code"))
        return payload.get("data")

    # --- auth --------------------------------------------------------------------------------

    async def login(self, email: str, password: str) -> dict[str, Any]:
        tokens = await self.request("POST", "/auth/login", {"email": email, "password": password})
        self.access_token = tokens["access_token"]
        self.refresh_token = tokens["refresh_token"]
        return dict(tokens)

    async def refresh(self, refresh_token: str) -> dict[str, Any]:
        tokens = await self.request("POST", "/auth/refresh", {"refresh_token": refresh_token})
        self.access_token = tokens["access_token"]
        self.refresh_token = tokens["refresh_token"]
        return dict(tokens)

    async def profile(self) -> dict[str, Any]:
        return dict(await self.request("GET", "/auth/profile"))

    async def logout(self, refresh_token: str) -> dict[str, Any]:
        return dict(await self.request("POST", "/auth/logout", {"refresh_token": refresh_token}))

    # --- sites, gateways, machines -------------------------------------------------------------

    async def create_site(self, name: str, address: str | None = None) -> dict[str, Any]:
        return dict(await self.request("POST", "/sites", {"name": name, "address": address}))

    async def sites(self) -> list[dict[str, Any]]:
        return list(await self.request("GET", "/sites"))

    async def enrollment_token(self, site_id: str) -> str:
        data = await self.request("POST", f"/sites/{site_id}/enrollment-tokens")
        return str(data["token"])

    async def gateways(self) -> list[dict[str, Any]]:
        return list(await self.request("GET", "/gateways"))

    async def onboard_machine(
        self,
        *,
        name: str,
        site_id: str,
        location: str | None = None,
        catalog: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        body = {"name": name, "site_id": site_id, "location": location, "catalog": catalog or []}
        return dict(await self.request("POST", "/machines/onboard", body))

    async def machines(self) -> list[dict[str, Any]]:
        return list(await self.request("GET", "/machines"))

    async def catalog(self, machine_id: str) -> list[dict[str, Any]]:
        return list(await self.request("GET", f"/machines/{machine_id}/catalog"))

    # --- orders ----------------------------------------------------------------------------------

    async def orders(self, **filters: str | int) -> list[dict[str, Any]]:
        query = "&".join(f"{k}={v}" for k, v in filters.items())
        return list(await self.request("GET", f"/orders{'?' + query if query else ''}"))

    async def order(self, order_id: str) -> dict[str, Any]:
        return dict(await self.request("GET", f"/orders/{order_id}"))

    # --- payments ---------------------------------------------------------------------------------

    async def payment_provider(self) -> dict[str, Any]:
        """The tenant's provider settings (never its secrets) and the webhook URL to give it."""
        return dict(await self.request("GET", "/payments/provider"))

    async def set_payment_provider(
        self,
        provider: str,
        key_id: str,
        *,
        key_secret: str | None = None,
        webhook_secret: str | None = None,
        enabled: bool = True,
    ) -> dict[str, Any]:
        """Secrets left out keep the stored ones (both are needed the first time)."""
        body: dict[str, Any] = {"provider": provider, "key_id": key_id, "enabled": enabled}
        if key_secret is not None:
            body["key_secret"] = key_secret
        if webhook_secret is not None:
            body["webhook_secret"] = webhook_secret
        return dict(await self.request("PUT", "/payments/provider", body))

    # --- claim codes -----------------------------------------------------------------------------

    async def create_claim(
        self, machine_id: str, *, ciphertext: str, nonce: str, code_hash: str, ttl_s: int
    ) -> dict[str, Any]:
        body = {"ciphertext": ciphertext, "nonce": nonce, "code_hash": code_hash, "ttl_s": ttl_s}
        return dict(await self.request("POST", f"/machines/{machine_id}/claims", body))

    async def redeem_claim(self, code_hash: str) -> dict[str, Any]:
        """Public: no login needed; the code's hash is the credential."""
        return dict(await self.request("POST", "/claims/redeem", {"code_hash": code_hash}))


def _expires_at(token: str | None) -> float:
    """The ``exp`` of a JWT read without verifying it (only the cloud can verify; this is just
    to avoid a round trip that is bound to fail). Unreadable tokens count as expired."""
    if not token:
        return 0.0
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
        return float(claims.get("exp", 0))
    except (jwt.InvalidTokenError, TypeError, ValueError):
        return 0.0
