"""secrets at rest: AES-256-GCM envelopes for device keys and customer phone numbers

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 16:05:00.000000

The columns are widened to hold sealed values and ``sealing_keys`` (one canary per master key)
is created. Existing plaintext rows are not sealed here: a migration has no master key (it runs
from ``vending-cloud migrate`` too, and a key must never sit in the migration history). The cloud
seals every plaintext command key and phone number it finds at start, in one transaction, before
it serves (``cloud.db.sealed.seal_plaintext``); ``vending-cloud rekey`` does the same on demand.
Downgrading needs the values in plaintext again, so it refuses while sealed values exist: open
them first with the previous release's tools, or restore a backup.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.alter_column(
            "command_key",
            existing_type=sa.String(length=128),
            type_=sa.String(length=255),
            existing_nullable=False,
        )
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.alter_column(
            "customer_phone",
            existing_type=sa.String(length=32),
            type_=sa.String(length=255),
            existing_nullable=True,
        )
    op.create_table(
        "sealing_keys",
        sa.Column("kid", sa.String(length=32), nullable=False),
        sa.Column("canary", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_sealing_keys")),
    )


def downgrade() -> None:
    conn = op.get_bind()
    sealed = conn.scalar(
        sa.text(
            "SELECT (SELECT COUNT(*) FROM machines WHERE command_key LIKE 'v1.%') + "
            "(SELECT COUNT(*) FROM orders WHERE customer_phone LIKE 'v1.%')"
        )
    )
    if sealed:
        raise RuntimeError(
            f"{sealed} sealed values (command keys, phone numbers) would not fit the old "
            "columns and the old code cannot open them; restore a backup from before 0005"
        )
    op.drop_table("sealing_keys")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.alter_column(
            "customer_phone",
            existing_type=sa.String(length=255),
            type_=sa.String(length=32),
            existing_nullable=True,
        )
    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.alter_column(
            "command_key",
            existing_type=sa.String(length=255),
            type_=sa.String(length=128),
            existing_nullable=False,
        )
