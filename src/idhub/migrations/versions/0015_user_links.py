"""user_links and identity_conflicts: one identity per person across sources; every existing
user's (source, external_id) becomes its first, creating link

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01 14:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user_links",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "user_id",
            sa.Integer(),
            sa.ForeignKey("users.id", name="fk_user_links_user_id_users"),
            nullable=False,
        ),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("external_id", sa.String(200), nullable=False),
        sa.Column("linked_at", sa.Float(), nullable=False),
        sa.Column("linked_by", sa.String(200), nullable=False),
        sa.Column("key", sa.String(50), nullable=True),
        sa.Column("value_hash", sa.String(64), nullable=True),
        sa.Column("attrs", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_user_links"),
        sa.UniqueConstraint("source", "external_id", name="uq_user_links_source_external_id"),
    )
    op.create_index("ix_user_links_user", "user_links", ["user_id"])
    op.create_table(
        "identity_conflicts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("external_id", sa.String(200), nullable=False),
        sa.Column("username", sa.String(200), nullable=True),
        sa.Column("key", sa.String(50), nullable=False),
        sa.Column("reason", sa.String(300), nullable=False),
        sa.Column("candidates", sa.JSON(), nullable=False),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.Column("resolved_at", sa.Float(), nullable=True),
        sa.Column("resolved_by", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_identity_conflicts"),
    )
    op.create_index("ix_identity_conflicts_source", "identity_conflicts", ["source", "external_id"])
    op.create_index("ix_identity_conflicts_username", "identity_conflicts", ["source", "username"])
    # What a SCIM request looks a person up by (the sync reads all users at once instead).
    op.create_index("ix_users_employee_id", "users", ["employee_id"])
    op.create_index("ix_users_email_lower", "users", [sa.text("lower(email)")])
    op.create_index("ix_users_phone", "users", ["phone"])
    # Every user a source made (external_id set) gets its creating link; local users (no
    # external id) have none until an admin or a sync links them.
    op.execute(
        "INSERT INTO user_links (user_id, source, external_id, linked_at, linked_by) "
        "SELECT id, source, external_id, created_at, 'created' FROM users "
        "WHERE external_id IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_index("ix_users_phone", table_name="users")
    op.drop_index("ix_users_email_lower", table_name="users")
    op.drop_index("ix_users_employee_id", table_name="users")
    op.drop_index("ix_identity_conflicts_username", table_name="identity_conflicts")
    op.drop_index("ix_identity_conflicts_source", table_name="identity_conflicts")
    op.drop_table("identity_conflicts")
    op.drop_index("ix_user_links_user", table_name="user_links")
    op.drop_table("user_links")
