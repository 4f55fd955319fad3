"""machine claims: one-time codes that hand an encrypted device bundle to a second technician

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 09:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "machine_claims",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("machine_id", sa.String(length=36), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=True),
        sa.Column("nonce", sa.String(length=32), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("redeemed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.String(length=36), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["machine_id"], ["machines.id"], name=op.f("fk_machine_claims_machine_id_machines")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_machine_claims_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_machine_claims")),
        sa.UniqueConstraint("code_hash", name=op.f("uq_machine_claims_code_hash")),
    )
    with op.batch_alter_table("machine_claims", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_machine_claims_machine_id"), ["machine_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_machine_claims_tenant_id"), ["tenant_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("machine_claims", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_machine_claims_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_machine_claims_machine_id"))

    op.drop_table("machine_claims")
