"""dead letters: sync events the cloud could not apply, kept aside with their error

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 16:05:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sync_dead_letters",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("site_id", sa.String(length=36), nullable=False),
        sa.Column("gateway_id", sa.String(length=36), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("payload_truncated", sa.Boolean(), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=False),
        sa.Column("error_message", sa.String(length=1000), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["gateway_id"], ["gateways.id"], name=op.f("fk_sync_dead_letters_gateway_id_gateways")
        ),
        sa.ForeignKeyConstraint(
            ["site_id"], ["sites.id"], name=op.f("fk_sync_dead_letters_site_id_sites")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_sync_dead_letters_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_dead_letters")),
        sa.UniqueConstraint("gateway_id", "event_id", name="uq_sync_dead_letters_gateway_event"),
    )
    with op.batch_alter_table("sync_dead_letters", schema=None) as batch_op:
        batch_op.create_index(
            "ix_sync_dead_letters_tenant_state",
            ["tenant_id", "state", "last_seen_at"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("sync_dead_letters", schema=None) as batch_op:
        batch_op.drop_index("ix_sync_dead_letters_tenant_state")
    op.drop_table("sync_dead_letters")
