from typing import Annotated, Literal

from pydantic import Field

from cloud.models.common import Input, Output


class LoginRequest(Input):
    email: Annotated[str, Field(min_length=3, max_length=320)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]


class RefreshRequest(Input):
    refresh_token: Annotated[str, Field(min_length=1, max_length=512)]


class TokenPair(Output):
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int


class LogoutResult(Output):
    revoked: bool


class Profile(Output):
    id: str
    email: str
    role: str
    tenant_id: str
    tenant_name: str
    permissions: list[str]
