"""session participants remember the protocol they signed in with

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 09:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing rows were all written by the OpenID Connect front, the only one there was.
    with op.batch_alter_table("session_clients") as batch:
        batch.add_column(
            sa.Column("protocol", sa.String(length=16), nullable=False, server_default="oidc")
        )


def downgrade() -> None:
    with op.batch_alter_table("session_clients") as batch:
        batch.drop_column("protocol")
