"""secrets at rest: AES-256-GCM envelopes for device keys and customer phone numbers

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 16:05:00.000000
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
