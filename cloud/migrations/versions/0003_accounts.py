"""accounts: user sessions and revocation, login attempts and audit log, JWT signing keys

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 16:05:00.000000
"""

import contextlib
from collections.abc import Iterator

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


@contextlib.contextmanager
def _children_set_aside() -> Iterator[None]:
    """SQLite rebuilds ``users`` (copy, drop, rename) to change its constraints. Dropping it
    would orphan the rows pointing at it (refresh tokens), and foreign keys cannot be switched
    off inside the migration's transaction, so those rows wait in a temporary table."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        yield
        return
    tables = [
        name
        for (name,) in bind.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
        if any(
            fk[2] == "users" for fk in bind.exec_driver_sql(f'PRAGMA foreign_key_list("{name}")')
        )
    ]
    for name in tables:
        bind.exec_driver_sql(f'CREATE TEMP TABLE "_aside_{name}" AS SELECT * FROM "{name}"')
        bind.exec_driver_sql(f'DELETE FROM "{name}"')
    yield
    for name in tables:
        bind.exec_driver_sql(f'INSERT INTO "{name}" SELECT * FROM "_aside_{name}"')
        bind.exec_driver_sql(f'DROP TABLE "_aside_{name}"')


def upgrade() -> None:
    with _children_set_aside(), op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("token_version", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column(
                "must_change_password", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )
        batch_op.add_column(
            sa.Column("password_expires_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.drop_constraint("uq_users_email", type_="unique")
        batch_op.create_unique_constraint("uq_users_tenant_email", ["tenant_id", "email"])
        batch_op.create_index(batch_op.f("ix_users_email"), ["email"], unique=False)

    op.create_table(
        "user_sessions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_user_sessions_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_sessions")),
    )
    with op.batch_alter_table("user_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_user_sessions_user_id"), ["user_id"], unique=False)
    # Sessions that exist already (refresh-token families) get their row, so nobody is logged
    # out by the upgrade; a family whose tokens are all revoked is an ended session.
    op.execute(
        "INSERT INTO user_sessions (id, user_id, created_at, revoked_at) "
        "SELECT family_id, MIN(user_id), MIN(created_at), "
        "CASE WHEN COUNT(*) = COUNT(revoked_at) THEN MAX(revoked_at) END "
        "FROM refresh_tokens GROUP BY family_id"
    )

    op.create_table(
        "login_throttle",
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("window_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_login_throttle")),
    )
    with op.batch_alter_table("login_throttle", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_login_throttle_updated_at"), ["updated_at"], unique=False
        )

    op.create_table(
        "login_audit",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=True),
        sa.Column("user_id", sa.String(length=36), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("client_address", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_audit")),
    )
    with op.batch_alter_table("login_audit", schema=None) as batch_op:
        batch_op.create_index(
            "ix_login_audit_email_address", ["email", "client_address", "outcome"], unique=False
        )
        batch_op.create_index(
            "ix_login_audit_tenant_created", ["tenant_id", "created_at"], unique=False
        )
        batch_op.create_index(
            "ix_login_audit_address_created", ["client_address", "created_at"], unique=False
        )


def downgrade() -> None:
    op.drop_table("login_audit")
    op.drop_table("login_throttle")
    op.drop_table("user_sessions")
    with _children_set_aside(), op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_users_email"))
        batch_op.drop_constraint("uq_users_tenant_email", type_="unique")
        # Fails if one address now has accounts in several tenants: that cannot go back.
        batch_op.create_unique_constraint("uq_users_email", ["email"])
        batch_op.drop_column("password_expires_at")
        batch_op.drop_column("must_change_password")
        batch_op.drop_column("token_version")
