"""Fixtures for vendctl: a real cloud (SQLite, ephemeral ports) running on its own event loop
in a background thread, so tests call ``vendctl``'s ``main([...])`` directly (it runs its own
``asyncio.run``) and read its output with capsys."""

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from cloud.auth.passwords import Passwords
from cloud.bootstrap import create_tenant_with_admin
from cloud.server import CloudServer
from cloud.settings import CloudSettings
from provisioning.cloud_api import CloudApi

T = TypeVar("T")
PASSWORD = "correct horse battery"
JWT_SECRET = "vendctl-test-secret-" + "y" * 40
CHEAP_PASSWORDS = Passwords(time_cost=1, memory_cost=8, parallelism=1)


class ThreadedCloud:
    """A ``CloudServer`` on a private loop; ``run(coro_fn)`` executes on that loop."""

    def __init__(self, settings: CloudSettings) -> None:
        self.server = CloudServer(settings)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="cloud", daemon=True)

    def run(self, make: Callable[[], Awaitable[T]], timeout: float = 30) -> T:
        async def wrapped() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout)

    def start(self) -> None:
        self.thread.start()
        self.run(self.server.start)

    def stop(self) -> None:
        try:
            self.run(self.server.stop)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    @property
    def url(self) -> str:
        return self.server.api_url


@pytest.fixture(scope="session")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedCloud]:
    root = tmp_path_factory.mktemp("vendctl-cloud")
    settings = CloudSettings(
        database_url=f"sqlite+aiosqlite:///{root / 'cloud.db'}",
        data_dir=root / "data",
        http_port=0,
        sync_port=0,
        jwt_secret=JWT_SECRET,
        password_hash_time_cost=1,
        password_hash_memory_cost=8,
        password_hash_parallelism=1,
    )
    threaded = ThreadedCloud(settings)
    threaded.start()
    yield threaded
    threaded.stop()


@dataclass
class Account:
    cloud: ThreadedCloud
    email: str
    password: str
    tenant_id: str
    site_id: str

    def api(self, call: Callable[[CloudApi], Awaitable[T]]) -> T:
        """Run ``call`` with a freshly logged-in admin client on the cloud's loop."""

        async def go() -> T:
            async with CloudApi(self.cloud.url) as api:
                await api.login(self.email, self.password)
                return await call(api)

        return self.cloud.run(go)


@pytest.fixture
def account(cloud: ThreadedCloud) -> Account:
    suffix = uuid.uuid4().hex[:8]
    email = f"tech-{suffix}@example.com"

    async def make() -> str:
        return await create_tenant_with_admin(
            cloud.server.engine, f"tenant-{suffix}", email, PASSWORD, passwords=CHEAP_PASSWORDS
        )

    tenant_id = cloud.run(make)
    acct = Account(cloud, email, PASSWORD, tenant_id, "")
    acct.site_id = acct.api(lambda api: api.create_site("Main site"))["id"]
    return acct


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own vendctl config dir and working directory (default bundle path)."""
    config = tmp_path / "vendctl-config"
    monkeypatch.setenv("VENDCTL_CONFIG_DIR", str(config))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return config


@pytest.fixture
def jwt_secret() -> str:
    return JWT_SECRET


@pytest.fixture
def logged_in(account: Account, isolated: Path) -> Account:
    from provisioning.cli import main

    assert (
        main(
            [
                "login",
                "--cloud",
                account.cloud.url,
                "--email",
                account.email,
                "--password",
                account.password,
            ]
        )
        == 0
    )
    return account


def one_line_error(err: str) -> str:
    """The CLI's failure output: exactly one line, the vendctl error line, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("vendctl: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(name="one_line_error")
def _one_line_error() -> Callable[[str], str]:
    return one_line_error
