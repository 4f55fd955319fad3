from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool, StrictInt

from cloud.models.common import Input, Output
from contracts.device_messages import SlotCode
from contracts.money import Amount, Currency
from contracts.numbers import WHOLE_NUMBER
from contracts.openapi import NulFreeJsonObject
from contracts.sync import ItemName
from contracts.text import PRINTABLE, Ref

# The same rule as the item names a gateway syncs back (contracts.sync), so a name set here never
# makes the cloud refuse its own orders.
Name = ItemName


class CatalogItemIn(Input):
    slot: SlotCode
    name: Name
    category: Annotated[str, Field(max_length=100), PRINTABLE] | None = None
    price: Amount
    # None keeps the current count (new slots start empty); a number is a restock.
    quantity: Annotated[StrictInt, Field(ge=0, le=1000), WHOLE_NUMBER] | None = None
    capacity: Annotated[StrictInt, Field(ge=1, le=1000), WHOLE_NUMBER] | None = None
    image_url: Annotated[str, Field(max_length=1000), PRINTABLE] | None = None
    active: StrictBool = True


class CatalogReplace(Input):
    items: Annotated[list[CatalogItemIn], Field(max_length=200)]


class CatalogItemOut(Output):
    id: str
    slot: str
    name: str
    category: str | None
    price: int
    currency: str
    quantity: int
    capacity: int | None
    stock_rev: int
    image_url: str | None
    active: bool
    # The slot's switch: an operator's (enable_rev bumps) or the gateway's after jams.
    enabled: bool
    enable_rev: int
    disabled_reason: str | None
    disabled_at: datetime | None
    consecutive_failures: int


class MachineOnboard(Input):
    name: Name
    site_id: Ref
    location: Annotated[str, Field(max_length=500), PRINTABLE] | None = None
    currency: Currency = "INR"
    catalog: Annotated[list[CatalogItemIn], Field(max_length=200)] = Field(default_factory=list)


class MachineOut(Output):
    id: str
    tenant_id: str
    site_id: str
    name: str
    location: str | None
    status: Literal["active", "decommissioned"]
    currency: str
    version: int
    created_at: datetime
    updated_at: datetime


class MachineDetail(MachineOut):
    config: dict[str, Any]
    catalog: list[CatalogItemOut]
    # Cash the machine holds as free credit for the next order (sum of its credit entries).
    credit_balance: int


class DeviceCredentials(Output):
    """Shown once, at onboarding; the cloud keeps only the secret's hash."""

    machine_id: str
    mqtt_username: str
    mqtt_password: str
    command_key: str


class OnboardResult(Output):
    machine: MachineDetail
    credentials: DeviceCredentials


class MachineConfig(Input):
    config: NulFreeJsonObject


class MachineConfigOut(Output):
    machine_id: str
    config: dict[str, Any]
    version: int


class MachineStatus(Output):
    machine_id: str
    status: Literal["active", "decommissioned"]
    version: int
    gateway_ids: list[str]
    gateway_last_seen_at: datetime | None
    last_order_at: datetime | None
    orders_total: int
    low_stock_slots: list[str]
