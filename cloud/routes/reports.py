"""Money reports of the caller's tenant: settlement (JSON or CSV) and reconciliation."""

from aiohttp import web

from cloud.auth.permissions import Permission
from cloud.errors import ValidationFailed
from cloud.http.registry import Api, Call
from cloud.reports.models import (
    ReconciliationQuery,
    ReconciliationReport,
    SettlementQuery,
    SettlementReport,
)
from cloud.reports.reconciliation import reconciliation
from cloud.reports.settlement import csv_filename, settlement, to_csv

api = Api("/api/v1/reports")
TAG = "reports"


@api.route(
    "GET",
    "/settlement",
    summary=(
        "Settlement per UTC day, machine and tender (cash, upi, sandbox): orders, gross, "
        "refunds, machine credit, net; format=csv for a spreadsheet"
    ),
    tag=TAG,
    query=SettlementQuery,
    response=SettlementReport,
    permission=Permission.PAYMENTS_READ,
    errors=(),
    alt_content=("text/csv",),
)
async def get_settlement(call: Call) -> SettlementReport | web.Response:
    q = call.query(SettlementQuery)
    if q.from_ > q.to:
        raise ValidationFailed(
            "from is after to", details={"from": q.from_.isoformat(), "to": q.to.isoformat()}
        )
    async with call.ctx.engine.connect() as conn:
        report = await settlement(conn, call.principal.tenant_id, q)
    if q.format == "json":
        return report
    return web.Response(
        text=to_csv(report),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{csv_filename(report)}"'},
    )


@api.route(
    "GET",
    "/reconciliation",
    summary=(
        "Reconciliation of one UTC day: every captured provider payment matched to one order, "
        "each mismatch listed"
    ),
    tag=TAG,
    query=ReconciliationQuery,
    response=ReconciliationReport,
    permission=Permission.PAYMENTS_READ,
    errors=(),
)
async def get_reconciliation(call: Call) -> ReconciliationReport:
    q = call.query(ReconciliationQuery)
    async with call.ctx.engine.connect() as conn:
        return await reconciliation(conn, call.principal.tenant_id, q)
