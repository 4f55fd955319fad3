"""A cloud client built from the stored login that keeps the stored token pair current."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from provisioning.cloud_api import CloudApi
from provisioning.config_store import ConfigStore, StoredLogin


@asynccontextmanager
async def logged_in(store: ConfigStore) -> AsyncIterator[tuple[CloudApi, StoredLogin]]:
    """``async with logged_in(store) as (api, login)``: ``api`` refreshes an expired access
    token by itself and saves the rotated pair at once (the old refresh token is dead from that
    moment on, so losing the new one would log the technician out)."""
    login = store.load()

    def save(access_token: str, refresh_token: str) -> None:
        login.access_token, login.refresh_token = access_token, refresh_token
        store.save(login)

    async with CloudApi(
        login.cloud_url,
        access_token=login.access_token,
        refresh_token=login.refresh_token,
        on_tokens=save,
    ) as api:
        await api.ensure_fresh()
        yield api, login
