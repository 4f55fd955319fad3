"""Users of the caller's tenant."""

import uuid

import sqlalchemy as sa

from cloud.auth.permissions import Permission
from cloud.db import schema as t
from cloud.db.rows import row_dict
from cloud.db.times import utcnow
from cloud.errors import Conflict
from cloud.http.registry import Api, Call
from cloud.models.users import UserCreate, UserOut

api = Api("/api/v1")
TAG = "users"
_COLUMNS = [t.users.c[name] for name in UserOut.model_fields]


@api.route(
    "POST",
    "/users",
    summary="Add a user to the caller's tenant",
    tag=TAG,
    body=UserCreate,
    response=UserOut,
    status=201,
    permission=Permission.USERS_WRITE,
)
async def create_user(call: Call) -> UserOut:
    body = call.body(UserCreate)
    password_hash = await call.ctx.passwords.hash(body.password)
    user_id = str(uuid.uuid4())
    async with call.ctx.engine.begin() as conn:
        taken = await conn.scalar(
            sa.select(t.users.c.id).where(t.users.c.email == body.email.lower())
        )
        if taken is not None:
            raise Conflict("a user with this e-mail already exists")
        await conn.execute(
            t.users.insert().values(
                id=user_id,
                tenant_id=call.principal.tenant_id,
                email=body.email.lower(),
                password_hash=password_hash,
                role=body.role.value,
                active=True,
                created_at=utcnow(),
            )
        )
        row = (await conn.execute(sa.select(*_COLUMNS).where(t.users.c.id == user_id))).one()
    return UserOut.model_validate(row_dict(row))


@api.route(
    "GET",
    "/users",
    summary="Users of the caller's tenant",
    tag=TAG,
    response=UserOut,
    many=True,
    permission=Permission.USERS_READ,
)
async def list_users(call: Call) -> list[UserOut]:
    async with call.ctx.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(*_COLUMNS)
            .where(t.users.c.tenant_id == call.principal.tenant_id)
            .order_by(t.users.c.created_at, t.users.c.email)
        )
        return [UserOut.model_validate(row_dict(r)) for r in rows]
