"""upstream_states: browsers sent to an upstream provider (DingTalk, WeCom, OIDC) for sign-in
and not back yet; each row is used once

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 14:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "upstream_states",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.String(length=100), nullable=False),
        sa.Column("return_to", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_upstream_states")),
    )
    with op.batch_alter_table("upstream_states") as batch:
        batch.create_index("ix_upstream_states_expires_at", ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("upstream_states") as batch:
        batch.drop_index("ix_upstream_states_expires_at")
    op.drop_table("upstream_states")
