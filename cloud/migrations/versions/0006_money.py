"""money: payment providers, webhooks, refunds, machine credit, slot switches

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 18:10:00.000000

New tables for the Razorpay path (per-tenant credentials, verified webhook events, the
provider's captured payments, refunds), the machines' cash credit moves, the tenants' money
policy and an audit of what operators did by hand. Orders gain the refunded and credited
amounts; catalog slots gain the enable switch; payments gain the provider's payment id and the
state of closing their QR code. Only columns with defaults or NULL are added, so rows written
before stay valid.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "operator_audit",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target_type", sa.String(length=32), nullable=False),
        sa.Column("target_id", sa.String(length=100), nullable=False),
        sa.Column("note", sa.String(length=1000), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_operator_audit_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operator_audit")),
    )
    with op.batch_alter_table("operator_audit", schema=None) as batch_op:
        batch_op.create_index(
            "ix_operator_audit_tenant_created", ["tenant_id", "created_at"], unique=False
        )

    op.create_table(
        "payment_providers",
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("key_secret", sa.String(length=512), nullable=False),
        sa.Column("webhook_secret", sa.String(length=512), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=36), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_payment_providers_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_payment_providers")),
    )
    op.create_table(
        "provider_events",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("entity_id", sa.String(length=64), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("note", sa.String(length=500), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_provider_events_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_events")),
    )
    with op.batch_alter_table("provider_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_provider_events_entity_id"), ["entity_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_provider_events_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "provider_payments",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("payment_id", sa.String(length=36), nullable=True),
        sa.Column("qr_code_id", sa.String(length=64), nullable=True),
        sa.Column("order_id", sa.String(length=64), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("method", sa.String(length=32), nullable=True),
        sa.Column("amount_refunded", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("captured_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_provider_payments_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_payments")),
    )
    with op.batch_alter_table("provider_payments", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_provider_payments_order_id"), ["order_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_provider_payments_payment_id"), ["payment_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_provider_payments_qr_code_id"), ["qr_code_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_provider_payments_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "tenant_money_policies",
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("unknown_outcome", sa.String(length=16), nullable=False),
        sa.Column("disable_slot_after_failures", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_tenant_money_policies_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_tenant_money_policies")),
    )
    op.create_table(
        "credit_entries",
        sa.Column("entry_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("machine_id", sa.String(length=36), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=True),
        sa.Column("credit_id", sa.String(length=64), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("delta", sa.BigInteger(), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["machine_id"], ["machines.id"], name=op.f("fk_credit_entries_machine_id_machines")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_credit_entries_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("entry_id", name=op.f("pk_credit_entries")),
    )
    with op.batch_alter_table("credit_entries", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_credit_entries_machine_id"), ["machine_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_credit_entries_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "refunds",
        sa.Column("id", sa.String(length=100), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("site_id", sa.String(length=36), nullable=True),
        sa.Column("machine_id", sa.String(length=36), nullable=True),
        sa.Column("order_id", sa.String(length=64), nullable=True),
        sa.Column("payment_id", sa.String(length=36), nullable=True),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("provider_payment_id", sa.String(length=64), nullable=True),
        sa.Column("provider_refund_id", sa.String(length=64), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("note", sa.String(length=1000), nullable=True),
        sa.Column("resolved_by", sa.String(length=36), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("refunded_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["machine_id"], ["machines.id"], name=op.f("fk_refunds_machine_id_machines")
        ),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], name=op.f("fk_refunds_site_id_sites")),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_refunds_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refunds")),
    )
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_refunds_next_attempt_at"), ["next_attempt_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_refunds_order_id"), ["order_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_refunds_payment_id"), ["payment_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_refunds_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_index(
            "ix_refunds_tenant_status", ["tenant_id", "status", "created_at"], unique=False
        )

    with op.batch_alter_table("catalog_items", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("enabled", sa.Boolean(), server_default=sa.true(), nullable=False)
        )
        batch_op.add_column(
            sa.Column("enable_rev", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("disabled_reason", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("consecutive_failures", sa.Integer(), server_default="0", nullable=False)
        )

    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("refund_amount", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("credit_amount", sa.BigInteger(), server_default="0", nullable=False)
        )

    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("provider_payment_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("close_state", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("polled_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("failure_reason", sa.String(length=200), nullable=True))
        batch_op.create_index(batch_op.f("ix_payments_close_state"), ["close_state"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_payments_provider_payment_id"), ["provider_payment_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_payments_provider_payment_id"))
        batch_op.drop_index(batch_op.f("ix_payments_close_state"))
        batch_op.drop_column("failure_reason")
        batch_op.drop_column("polled_at")
        batch_op.drop_column("closed_at")
        batch_op.drop_column("close_state")
        batch_op.drop_column("provider_payment_id")

    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_column("credit_amount")
        batch_op.drop_column("refund_amount")

    with op.batch_alter_table("catalog_items", schema=None) as batch_op:
        batch_op.drop_column("consecutive_failures")
        batch_op.drop_column("disabled_at")
        batch_op.drop_column("disabled_reason")
        batch_op.drop_column("enable_rev")
        batch_op.drop_column("enabled")

    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.drop_index("ix_refunds_tenant_status")
        batch_op.drop_index(batch_op.f("ix_refunds_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_refunds_payment_id"))
        batch_op.drop_index(batch_op.f("ix_refunds_order_id"))
        batch_op.drop_index(batch_op.f("ix_refunds_next_attempt_at"))

    op.drop_table("refunds")
    with op.batch_alter_table("credit_entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_credit_entries_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_credit_entries_machine_id"))

    op.drop_table("credit_entries")
    op.drop_table("tenant_money_policies")
    with op.batch_alter_table("provider_payments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_provider_payments_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_provider_payments_qr_code_id"))
        batch_op.drop_index(batch_op.f("ix_provider_payments_payment_id"))
        batch_op.drop_index(batch_op.f("ix_provider_payments_order_id"))

    op.drop_table("provider_payments")
    with op.batch_alter_table("provider_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_provider_events_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_provider_events_entity_id"))

    op.drop_table("provider_events")
    op.drop_table("payment_providers")
    with op.batch_alter_table("operator_audit", schema=None) as batch_op:
        batch_op.drop_index("ix_operator_audit_tenant_created")

    op.drop_table("operator_audit")
