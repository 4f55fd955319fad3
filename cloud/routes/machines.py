"""Machines: onboarding (device credentials shown once), catalog, config, status, decommission,
free cash credit, and the operator's slot switches."""

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.auth.permissions import Permission
from cloud.db import schema as t
from cloud.db import sealed
from cloud.db.engine import read_rows
from cloud.db.machines import catalogs, check_unique_slots, get_machine, replace_catalog
from cloud.db.rows import row_dict
from cloud.db.times import as_utc, utcnow
from cloud.db.versions import bump_machine
from cloud.errors import Conflict, NotFound
from cloud.http.registry import Api, Call
from cloud.models.machines import (
    CatalogItemOut,
    CatalogReplace,
    DeviceCredentials,
    MachineConfig,
    MachineConfigOut,
    MachineDetail,
    MachineOnboard,
    MachineOut,
    MachineStatus,
    OnboardResult,
)
from cloud.reports import credit
from cloud.reports.models import CreditQuery, MachineCredit, SlotSwitch
from cloud.routes.sites import get_site
from contracts.credentials import hash_secret, new_command_key, new_mqtt_secret

api = Api("/api/v1/machines")
TAG = "machines"
_OUT_FIELDS = list(MachineOut.model_fields)
_CATALOG_FIELDS = list(CatalogItemOut.model_fields)


def _out(row: sa.Row[Any]) -> MachineOut:
    data = row_dict(row)
    return MachineOut.model_validate({k: data[k] for k in _OUT_FIELDS})


async def _detail(conn: AsyncConnection, row: sa.Row[Any]) -> MachineDetail:
    data = row_dict(row)
    items = (await catalogs(conn, [row.id])).get(row.id, [])
    return MachineDetail.model_validate(
        {k: data[k] for k in _OUT_FIELDS}
        | {
            "config": row.config or {},
            "catalog": [{k: item[k] for k in _CATALOG_FIELDS} for item in items],
            "credit_balance": await credit.balance(conn, row.id, row.currency),
        }
    )


async def _machine_row(conn: AsyncConnection, machine_id: str) -> sa.Row[Any]:
    return (await conn.execute(sa.select(t.machines).where(t.machines.c.id == machine_id))).one()


@api.route(
    "POST",
    "/onboard",
    summary="Onboard a machine; returns its device credentials once",
    tag=TAG,
    body=MachineOnboard,
    response=OnboardResult,
    status=201,
    permission=Permission.MACHINES_WRITE,
    errors=(404, 409),
)
async def onboard(call: Call) -> OnboardResult:
    body = call.body(MachineOnboard)
    check_unique_slots(body.catalog)
    tenant_id = call.principal.tenant_id
    machine_id = str(uuid.uuid4())
    mqtt_password, command_key = new_mqtt_secret(), new_command_key()
    now = utcnow()
    async with call.ctx.engine.begin() as conn:
        site = await get_site(conn, tenant_id, body.site_id)
        taken = await conn.scalar(
            sa.select(t.machines.c.id).where(
                t.machines.c.site_id == site.id, t.machines.c.name == body.name
            )
        )
        if taken is not None:
            raise Conflict(f"a machine named {body.name!r} already exists at this site")
        await conn.execute(
            t.machines.insert().values(
                id=machine_id,
                tenant_id=tenant_id,
                site_id=site.id,
                name=body.name,
                location=body.location,
                status="active",
                currency=body.currency,
                mqtt_secret_hash=hash_secret(mqtt_password),
                command_key=sealed.seal_command_key(conn, machine_id, command_key),
                config={},
                version=0,
                created_at=now,
                updated_at=now,
            )
        )
        await replace_catalog(conn, machine_id, body.currency, body.catalog)
        woken = await bump_machine(conn, machine_id)
        detail = await _detail(conn, await _machine_row(conn, machine_id))
    call.ctx.hub.wake(woken)
    return OnboardResult(
        machine=detail,
        credentials=DeviceCredentials(
            machine_id=machine_id,
            mqtt_username=machine_id,
            mqtt_password=mqtt_password,
            command_key=command_key,
        ),
    )


_LIST = (
    sa.select(t.machines)
    .where(t.machines.c.tenant_id == sa.bindparam("tenant_id"))
    .order_by(t.machines.c.created_at, t.machines.c.name)
)


@api.route(
    "GET",
    "",
    summary="Machines of the caller's tenant",
    tag=TAG,
    response=MachineOut,
    many=True,
    permission=Permission.MACHINES_READ,
    errors=(),
)
async def list_machines(call: Call) -> list[MachineOut]:
    rows = await read_rows(call.ctx.engine, _LIST, {"tenant_id": call.principal.tenant_id})
    return [_out(r) for r in rows]


@api.route(
    "GET",
    "/{machine_id}",
    summary="One machine with config and catalog",
    tag=TAG,
    response=MachineDetail,
    permission=Permission.MACHINES_READ,
    errors=(),
)
async def get_one(call: Call) -> MachineDetail:
    async with call.ctx.engine.connect() as conn:
        row = await get_machine(conn, call.principal.tenant_id, call.path("machine_id"))
        return await _detail(conn, row)


@api.route(
    "GET",
    "/{machine_id}/catalog",
    summary="A machine's catalog",
    tag=TAG,
    response=CatalogItemOut,
    many=True,
    permission=Permission.MACHINES_READ,
    errors=(),
)
async def get_catalog(call: Call) -> list[CatalogItemOut]:
    async with call.ctx.engine.connect() as conn:
        row = await get_machine(conn, call.principal.tenant_id, call.path("machine_id"))
        return (await _detail(conn, row)).catalog


@api.route(
    "PUT",
    "/{machine_id}/catalog",
    summary="Replace a machine's catalog",
    tag=TAG,
    body=CatalogReplace,
    response=CatalogItemOut,
    many=True,
    permission=Permission.MACHINES_WRITE,
    errors=(409,),
)
async def put_catalog(call: Call) -> list[CatalogItemOut]:
    body = call.body(CatalogReplace)
    async with call.ctx.engine.begin() as conn:
        row = await get_machine(conn, call.principal.tenant_id, call.path("machine_id"))
        if row.status != "active":
            raise Conflict("machine is decommissioned")
        await replace_catalog(conn, row.id, row.currency, body.items)
        woken = await bump_machine(conn, row.id)
        detail = await _detail(conn, await _machine_row(conn, row.id))
    call.ctx.hub.wake(woken)
    return detail.catalog


@api.route(
    "GET",
    "/{machine_id}/config",
    summary="A machine's config",
    tag=TAG,
    response=MachineConfigOut,
    permission=Permission.MACHINES_READ,
    errors=(),
)
async def get_config(call: Call) -> MachineConfigOut:
    async with call.ctx.engine.connect() as conn:
        row = await get_machine(conn, call.principal.tenant_id, call.path("machine_id"))
    return MachineConfigOut(machine_id=row.id, config=row.config or {}, version=row.version)


@api.route(
    "PUT",
    "/{machine_id}/config",
    summary="Replace a machine's config",
    tag=TAG,
    body=MachineConfig,
    response=MachineConfigOut,
    permission=Permission.MACHINES_WRITE,
    errors=(),
)
async def put_config(call: Call) -> MachineConfigOut:
    body = call.body(MachineConfig)
    async with call.ctx.engine.begin() as conn:
        row = await get_machine(conn, call.principal.tenant_id, call.path("machine_id"))
        await conn.execute(
            t.machines.update().where(t.machines.c.id == row.id).values(config=body.config)
        )
        woken = await bump_machine(conn, row.id)
        row = await _machine_row(conn, row.id)
    call.ctx.hub.wake(woken)
    return MachineConfigOut(machine_id=row.id, config=row.config or {}, version=row.version)


@api.route(
    "GET",
    "/{machine_id}/status",
    summary="A machine's status",
    tag=TAG,
    response=MachineStatus,
    permission=Permission.MACHINES_READ,
    errors=(),
)
async def get_status(call: Call) -> MachineStatus:
    async with call.ctx.engine.connect() as conn:
        row = await get_machine(conn, call.principal.tenant_id, call.path("machine_id"))
        gateways = (
            await conn.execute(
                sa.select(t.gateways.c.id, t.gateways.c.last_seen_at).where(
                    t.gateways.c.site_id == row.site_id, t.gateways.c.status == "active"
                )
            )
        ).all()
        orders = (
            await conn.execute(
                sa.select(sa.func.count(), sa.func.max(t.orders.c.created_at)).where(
                    t.orders.c.machine_id == row.id
                )
            )
        ).one()
        low = await conn.execute(
            sa.select(t.catalog_items.c.slot)
            .where(
                t.catalog_items.c.machine_id == row.id,
                t.catalog_items.c.active.is_(True),
                t.catalog_items.c.quantity == 0,
            )
            .order_by(t.catalog_items.c.slot)
        )
        low_slots = [r.slot for r in low]
    seen = [g.last_seen_at for g in gateways if g.last_seen_at is not None]
    return MachineStatus.model_validate(
        {
            "machine_id": row.id,
            "status": row.status,
            "version": row.version,
            "gateway_ids": [g.id for g in gateways],
            "gateway_last_seen_at": as_utc(max(seen)) if seen else None,
            "last_order_at": as_utc(orders[1]) if orders[1] is not None else None,
            "orders_total": orders[0],
            "low_stock_slots": low_slots,
        }
    )


@api.route(
    "DELETE",
    "/{machine_id}/decommission",
    summary="Decommission a machine",
    tag=TAG,
    response=MachineOut,
    permission=Permission.MACHINES_WRITE,
    errors=(),
)
async def decommission(call: Call) -> MachineOut:
    async with call.ctx.engine.begin() as conn:
        row = await get_machine(conn, call.principal.tenant_id, call.path("machine_id"))
        woken: list[str] = []
        if row.status != "decommissioned":
            await conn.execute(
                t.machines.update().where(t.machines.c.id == row.id).values(status="decommissioned")
            )
            woken = await bump_machine(conn, row.id)
        row = await _machine_row(conn, row.id)
    call.ctx.hub.wake(woken)
    return _out(row)


@api.route(
    "POST",
    "/{machine_id}/provision-device",
    summary="Issue new device credentials (shown once); the old ones stop working",
    tag=TAG,
    response=DeviceCredentials,
    status=201,
    permission=Permission.MACHINES_WRITE,
    errors=(409,),
)
async def provision_device(call: Call) -> DeviceCredentials:
    mqtt_password, command_key = new_mqtt_secret(), new_command_key()
    async with call.ctx.engine.begin() as conn:
        row = await get_machine(conn, call.principal.tenant_id, call.path("machine_id"))
        if row.status != "active":
            raise Conflict("machine is decommissioned")
        await conn.execute(
            t.machines.update()
            .where(t.machines.c.id == row.id)
            .values(
                mqtt_secret_hash=hash_secret(mqtt_password),
                command_key=sealed.seal_command_key(conn, row.id, command_key),
            )
        )
        woken = await bump_machine(conn, row.id)
    call.ctx.hub.wake(woken)
    return DeviceCredentials(
        machine_id=row.id,
        mqtt_username=row.id,
        mqtt_password=mqtt_password,
        command_key=command_key,
    )


@api.route(
    "GET",
    "/{machine_id}/credit",
    summary="A machine's free cash credit (kept for the next cash order) and its moves",
    tag=TAG,
    query=CreditQuery,
    response=MachineCredit,
    permission=Permission.MACHINES_READ,
    errors=(),
)
async def get_credit(call: Call) -> MachineCredit:
    q = call.query(CreditQuery)
    async with call.ctx.engine.connect() as conn:
        row = await get_machine(conn, call.principal.tenant_id, call.path("machine_id"))
        return await credit.machine_credit(conn, row, q)


async def _switch_slot(call: Call, enabled: bool) -> CatalogItemOut:
    """Set a slot's switch for the gateway to adopt: ``enable_rev`` grows, so the gateway takes
    ``enabled`` even over a slot it disabled itself after jams; enabling also clears the
    failure count. One operator audit row per switch."""
    body = call.body(SlotSwitch)
    slot = call.path("slot")
    now = utcnow()
    ci = t.catalog_items
    async with call.ctx.engine.begin() as conn:
        row = await get_machine(conn, call.principal.tenant_id, call.path("machine_id"))
        if row.status != "active":
            raise Conflict("machine is decommissioned")
        item_id = await conn.scalar(
            sa.select(ci.c.id).where(ci.c.machine_id == row.id, ci.c.slot == slot)
        )
        if item_id is None:
            raise NotFound(f"machine {row.id} has no slot {slot}")
        values: dict[str, Any] = {
            "enabled": enabled,
            "enable_rev": ci.c.enable_rev + 1,
            "updated_at": now,
        }
        if enabled:
            values |= {"disabled_reason": None, "disabled_at": None, "consecutive_failures": 0}
        else:
            values |= {"disabled_reason": "operator", "disabled_at": now}
        await conn.execute(ci.update().where(ci.c.id == item_id).values(**values))
        action = "slot.enable" if enabled else "slot.disable"
        await conn.execute(
            t.operator_audit.insert().values(
                id=str(uuid.uuid4()),
                tenant_id=row.tenant_id,
                user_id=call.principal.user_id,
                action=action,
                target_type="catalog_item",
                target_id=item_id,
                note=f"machine {row.id} slot {slot}" + (f": {body.note}" if body.note else ""),
                created_at=now,
            )
        )
        woken = await bump_machine(conn, row.id)
        item = (await conn.execute(sa.select(ci).where(ci.c.id == item_id))).one()
    call.ctx.hub.wake(woken)
    data = row_dict(item)
    return CatalogItemOut.model_validate({k: data[k] for k in _CATALOG_FIELDS})


@api.route(
    "POST",
    "/{machine_id}/slots/{slot}/enable",
    summary="Enable a slot (also after the gateway disabled it for jams); clears its failures",
    tag=TAG,
    body=SlotSwitch,
    response=CatalogItemOut,
    permission=Permission.MACHINES_WRITE,
    errors=(409,),
)
async def enable_slot(call: Call) -> CatalogItemOut:
    return await _switch_slot(call, True)


@api.route(
    "POST",
    "/{machine_id}/slots/{slot}/disable",
    summary="Disable a slot: the kiosk stops selling it until it is enabled again",
    tag=TAG,
    body=SlotSwitch,
    response=CatalogItemOut,
    permission=Permission.MACHINES_WRITE,
    errors=(409,),
)
async def disable_slot(call: Call) -> CatalogItemOut:
    return await _switch_slot(call, False)
