"""Creating a tenant with its first admin (CLI ``create-tenant`` and tests)."""

import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.auth.passwords import Passwords
from cloud.auth.permissions import Role
from cloud.db import schema as t
from cloud.db.times import utcnow
from cloud.errors import Conflict
from cloud.settings import CloudSettings


async def create_tenant_with_admin(
    engine: AsyncEngine,
    name: str,
    email: str,
    password: str,
    *,
    passwords: Passwords | None = None,
) -> str:
    """Returns the new tenant's id. ``passwords`` defaults to the settings' argon2 cost."""
    hasher = passwords or Passwords.from_settings(CloudSettings())
    password_hash = await hasher.hash(password)
    tenant_id = str(uuid.uuid4())
    now = utcnow()
    async with engine.begin() as conn:
        if await conn.scalar(sa.select(t.tenants.c.id).where(t.tenants.c.name == name)):
            raise Conflict(f"tenant {name!r} already exists")
        if await conn.scalar(sa.select(t.users.c.id).where(t.users.c.email == email.lower())):
            raise Conflict(f"user {email!r} already exists")
        await conn.execute(t.tenants.insert().values(id=tenant_id, name=name, created_at=now))
        await conn.execute(
            t.users.insert().values(
                id=str(uuid.uuid4()),
                tenant_id=tenant_id,
                email=email.lower(),
                password_hash=password_hash,
                role=Role.ADMIN.value,
                active=True,
                created_at=now,
            )
        )
    return tenant_id
