"""the successor of a rotated refresh token, for the rotation grace window

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-01 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A client that retries a refresh whose answer it lost gets the same successor back
    # within `[tokens] refresh_reuse_grace`: its keyed hash and, sealed, the token itself.
    with op.batch_alter_table("refresh_tokens") as batch:
        batch.add_column(sa.Column("successor_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("successor_sealed", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("refresh_tokens") as batch:
        batch.drop_column("successor_sealed")
        batch.drop_column("successor_hash")
