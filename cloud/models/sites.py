from datetime import datetime
from typing import Annotated

from pydantic import Field

from cloud.models.common import Input, Output
from contracts.text import NOT_BLANK, PRINTABLE


class SiteCreate(Input):
    name: Annotated[str, Field(min_length=1, max_length=200), NOT_BLANK]
    address: Annotated[str, Field(max_length=500), PRINTABLE] | None = None


class SiteOut(Output):
    id: str
    tenant_id: str
    name: str
    address: str | None
    created_at: datetime


class EnrollmentTokenOut(Output):
    token: str  # shown once; only its hash is stored
    site_id: str
    expires_at: datetime


class GatewayOut(Output):
    id: str
    tenant_id: str
    site_id: str
    name: str | None
    status: str
    cert_serial: str
    cert_not_after: datetime
    last_seen_at: datetime | None
    created_at: datetime
