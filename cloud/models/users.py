from datetime import datetime
from typing import Annotated

from pydantic import Field

from cloud.auth.permissions import Role
from cloud.models.common import Input, Output


class UserCreate(Input):
    email: Annotated[str, Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")]
    password: Annotated[str, Field(min_length=8, max_length=1024)]
    role: Role


class UserOut(Output):
    id: str
    email: str
    role: Role
    tenant_id: str
    active: bool
    created_at: datetime
